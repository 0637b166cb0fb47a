"""Reading the files dsch_ext saves with ``torch.save`` (models, checkpoints, weights): always
``weights_only=True`` (no pickled code runs), and a file torch cannot read is one error that
names the file, what it should have been, and torch's first line of explanation."""
from typing import Any, Type

import torch


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_torch_file(path: str, what: str, error: Type[Exception] = ValueError, map_location="cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a file that does not load raises ``error``
    "PATH is not a readable WHAT: REASON". The caller checks that ``path`` exists."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch / pickle say what is wrong with the file
        raise error(f"{path} is not a readable {what}: {first_line(exc)}") from exc
