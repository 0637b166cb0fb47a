"""The package keeps the shape docs/architecture.md draws: every module belongs to one layer of
its table and imports only its own layer and the ones before it; no source unit grows past
400 lines; the library holds no benchmark workload ids and reads nothing under /proc."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "dsch_ext")
MAX_LINES = 400


def layers():
    """{module prefix: layer number} from the table of docs/architecture.md."""
    with open(os.path.join(ROOT, "docs/architecture.md")) as f:
        rows = [line for line in f if re.match(r"\| \d+\. ", line)]
    assert rows, "docs/architecture.md has no layer table"
    table = {}
    for row in rows:
        number = int(re.match(r"\| (\d+)\.", row).group(1))
        modules = row.split("|")[2]
        for name in re.findall(r"`([\w.]+)`", modules):
            table[name] = number
    return table


def modules():
    """(module name, path) of every .py file of the package."""
    for dirpath, dirnames, filenames in os.walk(PACKAGE):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield (rel[: -len(".__init__")] if rel.endswith(".__init__") else rel), path


def layer_of(module, table):
    best = max((p for p in table if module == p or module.startswith(p + ".")), key=len, default=None)
    return table.get(best)


def imports(module, path):
    """Absolute names of the dsch_ext modules that ``path`` imports (function-level included)."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "dsch_ext")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "dsch_ext":
                target = node.module
            else:
                continue
            for alias in node.names:  # `from . import x` imports the module x
                yield f"{target}.{alias.name}" if node.module is None else target


def test_every_module_has_a_layer_and_imports_only_earlier_ones():
    table = layers()
    unplaced, upward = [], []
    for module, path in modules():
        mine = layer_of(module, table)
        if mine is None:
            unplaced.append(module)
            continue
        for target in imports(module, path):
            theirs = layer_of(target, table)
            if theirs is not None and theirs > mine:
                upward.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
    assert not unplaced, f"modules in no row of docs/architecture.md: {unplaced}"
    assert not upward, "\n".join(upward)


def source_units():
    for top in ("dsch_ext", "csrc"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                if name.endswith((".py", ".cpp", ".h", ".cu", ".cuh")) and not name.startswith("_build_info"):
                    yield os.path.relpath(os.path.join(dirpath, name), ROOT)


@pytest.mark.parametrize("path", sorted(source_units()))
def test_source_units_stay_short_and_speak_of_the_library(path):
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    assert text.count("\n") <= MAX_LINES, f"{path} has {text.count(chr(10))} lines (at most {MAX_LINES})"
    assert "/proc" not in text, f"{path} reads /proc: a library respects torch's thread setting instead"
    assert not re.search(r"\b(workload|WORKLOADS)\b|\b[GHCEKRS][1-9]\b(?![\w(])", text), \
        f"{path} names a benchmark workload (those belong to benchmarks/)"
