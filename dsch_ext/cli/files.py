"""Arrays from the files the command line reads (.npy, .npz, .pt), checked so that a bad file
or bad values give one error naming the file."""
import os

import numpy as np
import torch

from .._torch_file import first_line
from .errors import CliError


def load_array(path, what):
    """The array a .npy, .npz (``codes`` or its only array) or .pt (a tensor, or ``codes`` /
    the first tensor of a dict) file holds."""
    if os.path.isdir(path):
        raise CliError(f"{what} file {path} is a directory")
    if not os.path.isfile(path):
        raise CliError(f"{what} file not found: {path}")
    lower = path.lower()
    if not lower.endswith((".npy", ".npz", ".pt", ".pth")):
        raise CliError(f"{what} file {path}: unknown format (use .npy, .npz or .pt)")
    try:
        if lower.endswith(".npy"):
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if lower.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise CliError(f"{what} file {path} holds no arrays")
                return torch.from_numpy(z["codes" if "codes" in z.files else z.files[0]])
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except CliError:
        raise
    except Exception as exc:  # numpy / torch say what is wrong with the file
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
