"""Reading the files dsch_ext saves with ``torch.save`` (models, checkpoints, weights): always
``weights_only=True`` (no pickled code runs), and a file torch cannot read is one error that
names the file, what it should have been and what it is instead. torch's own advice to retry
with ``weights_only=False`` is never passed on: that would run the file's code."""
import re
from typing import Any, Type

import torch

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_INDEX_MAGIC = b"DSCHBIX\x00"
_ZIP_MAGIC = b"PK\x03\x04"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message without terminal escape codes (its type's
    name when it has none)."""
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _what_it_is(path: str, exc: BaseException) -> str:
    """Why a file did not load, in the user's terms."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        return err.strerror or str(err)
    if head.startswith(_INDEX_MAGIC):
        return "it is a dsch_ext index file (dsch search reads those)"
    if "Weights only load failed" in str(exc):
        return ("it holds pickled Python objects, not only tensors (a whole model saved with torch.save(model)?); "
                "dsch_ext refuses to load those, since loading them runs their code: save model.state_dict() "
                "instead")
    if not head.startswith(_ZIP_MAGIC) and not head.startswith(b"\x80"):
        return "it is not a file torch.save wrote (a text file, or another format?)"
    return f"it is damaged or truncated ({first_line(exc)})"


def read_torch_file(path: str, what: str, error: Type[Exception] = ValueError, map_location="cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a file that does not load raises ``error``
    "PATH is not a readable WHAT: WHY". The caller checks that ``path`` exists."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch / pickle say what is wrong with the file
        raise error(f"{path} is not a readable {what}: {_what_it_is(path, exc)}") from exc
