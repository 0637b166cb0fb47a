"""Arrays from the files the command line reads (.npy, .npz, .pt)."""
import os

import numpy as np
import torch

from .errors import CliError


def load_array(path, what):
    if not os.path.isfile(path):
        raise CliError(f"{what} file not found: {path}")
    lower = path.lower()
    try:
        if lower.endswith(".npy"):
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if lower.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                key = "codes" if "codes" in z.files else z.files[0]
                return torch.from_numpy(z[key])
        if lower.endswith((".pt", ".pth")):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = obj.get("codes", next(iter(obj.values())))
            if not isinstance(obj, torch.Tensor):
                raise CliError(f"{what} file {path} holds no tensor")
            return obj
    except CliError:
        raise
    except Exception as exc:  # numpy / torch say what is wrong with the file
        raise CliError(f"cannot read {what} file {path}: {exc}") from exc
    raise CliError(f"{what} file {path}: unknown format (use .npy, .npz or .pt)")
