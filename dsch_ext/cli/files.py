"""Arrays from the files the command line reads (.npy, .npz, .pt), checked so that a bad file
or bad values give one error naming the file."""
import os

import numpy as np
import torch

from .._torch_file import first_line, read_torch_file
from .errors import CliError

_MAGIC = {".npy": ((b"\x93NUMPY",), "a .npy file (numpy.save)"),
          ".npz": ((b"PK\x03\x04", b"PK\x05\x06"), "a .npz file (numpy.savez)")}  # a zip archive, or an empty one


def load_array(path, what):
    """The array a .npy, .npz (``codes`` or its only array) or .pt (a tensor, or ``codes`` /
    the first tensor of a dict) file holds."""
    if os.path.isdir(path):
        raise CliError(f"{what} file {path} is a directory")
    if not os.path.isfile(path):
        raise CliError(f"{what} file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".npy", ".npz", ".pt", ".pth"):
        raise CliError(f"{what} file {path}: unknown format (use .npy, .npz or .pt)")
    if suffix in _MAGIC:
        magics, kind = _MAGIC[suffix]
        with open(path, "rb") as f:
            head = f.read(6)
        if not head.startswith(magics):
            raise CliError(f"cannot read {what} file {path}: it is not {kind}")
    try:
        if suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise CliError(f"{what} file {path} holds no arrays")
                return torch.from_numpy(z["codes" if "codes" in z.files else z.files[0]])
        obj = read_torch_file(path, f"{what} file", error=CliError)
    except CliError:
        raise
    except Exception as exc:  # numpy says what is wrong with the file
        raise CliError(f"cannot read {what} file {path}: {first_line(exc)}") from exc
    if isinstance(obj, dict):
        obj = obj.get("codes", next((v for v in obj.values() if isinstance(v, torch.Tensor)), None))
    if not isinstance(obj, torch.Tensor):
        raise CliError(f"{what} file {path} holds no tensor")
    return obj


def load_codes(path, what):
    """A 2-D array of real, finite code values (or packed bytes) from ``path``."""
    codes = load_array(path, what)
    if codes.dim() != 2:
        raise CliError(f"{what} in {path} must be 2-D [n, nbits], got shape {tuple(codes.shape)}")
    if codes.is_complex():
        raise CliError(f"{what} in {path} are complex (dtype {codes.dtype}): binary codes need real values")
    if codes.is_floating_point() and not bool(torch.isfinite(codes).all()):
        raise CliError(f"{what} in {path} contain NaN or Inf (shape {tuple(codes.shape)})")
    return codes
