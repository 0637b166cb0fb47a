"""Content hashes of tensors: what a run record and a checkpoint keep to say which data they
were made from, so that reusing or resuming them on other data is refused."""
import hashlib

import numpy as np
import torch


def fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 (hex) of the tensors' shapes, dtypes and bytes, in order."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(np.ascontiguousarray(t.detach().cpu().numpy()).data)
    return digest.hexdigest()
