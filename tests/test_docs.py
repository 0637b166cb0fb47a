"""The repository's documents stand on their own: every Markdown link and every document named in
code or docs is a file of the repository."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".benchmarks", ".pytest_cache", ".hypothesis"}
TEXT_SUFFIXES = (".md", ".py", ".h", ".cuh", ".cpp", ".cu", ".sh", ".toml", ".txt", ".in")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
NAMED_DOC = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b")
# Files the code writes (dsch results: its --out directory's tables.md), not documents it cites.
WRITTEN = {"tables.md", "out_dir/tables.md"}


def project_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".venv")
                       and not d.endswith(".egg-info")]
        for name in filenames:
            if name.endswith(TEXT_SUFFIXES) and not name.startswith("_build_info"):
                yield os.path.join(dirpath, name)


def resolves(source, target):
    if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
        return True
    here = os.path.dirname(source)
    return any(os.path.exists(os.path.normpath(os.path.join(base, target))) for base in (here, ROOT))


@pytest.mark.parametrize("path", sorted(os.path.relpath(p, ROOT) for p in project_files()))
def test_every_cited_document_is_in_the_repository(path):
    full = os.path.join(ROOT, path)
    with open(full, encoding="utf-8", errors="replace") as f:
        text = f.read()
    cited = set(NAMED_DOC.findall(text))
    if path.endswith(".md"):
        cited |= set(LINK.findall(text))
    missing = sorted(t for t in cited - WRITTEN if not resolves(full, t))
    assert not missing, f"{path} cites files that are not in the repository: {missing}"


# Paths of the repository named in code: under a top-level directory (csrc, dsch_ext, tests...)
# or relative to the file or to csrc (an include's "../common/..."). A path whose first segment
# is not a directory of the repository (torch/library.h, sklearn/..., faiss/...) is someone else's.
CODE_SUFFIXES = (".py", ".h", ".cuh", ".cpp", ".cu", ".sh")
NAMED_PATH = re.compile(r"(?<![\w/.<>-])((?:\.\./|[\w-]+/)+[\w.-]+\.(?:py|cpp|h|cuh|cu|sh|md|toml|json))\b")
OUTPUTS = {"build", "dist", "runs"}  # directories the build and the commands create


def project_dirs():
    tops = {d for d in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, d)) and not d.startswith(".venv")}
    return tops | {d for d in os.listdir(os.path.join(ROOT, "csrc")) if os.path.isdir(os.path.join(ROOT, "csrc", d))}


@pytest.mark.parametrize("path", sorted(os.path.relpath(p, ROOT) for p in project_files() if p.endswith(CODE_SUFFIXES)))
def test_every_path_named_in_code_exists(path):
    full = os.path.join(ROOT, path)
    with open(full, encoding="utf-8", errors="replace") as f:
        text = f.read()
    dirs = project_dirs()
    missing = []
    for target in sorted(set(NAMED_PATH.findall(text))):
        first = target.split("/")[0]
        if first != ".." and (first not in dirs or first in OUTPUTS):
            continue
        bases = (os.path.dirname(full), ROOT, os.path.join(ROOT, "csrc"))
        if not any(os.path.exists(os.path.normpath(os.path.join(b, target))) for b in bases):
            missing.append(target)
    assert not missing, f"{path} names paths that are not in the repository: {missing}"
