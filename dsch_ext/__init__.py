"""dsch_ext: deep unsupervised hashing (DSCH) made fast, as PyTorch ops.

``import dsch_ext`` loads the compiled kernels, which register ``torch.ops.dsch_ext.*``
(CPU always, CUDA when built with it), and exposes them as functions:

- :func:`pack_bits` / :func:`unpack_bits`: binary codes <-> faiss's packed bytes.
- :func:`hamming_distance`: all distances between packed codes.
- :func:`hamming_topk`: exact top-k by Hamming distance, ties to the lower index.
"""
from ._library import build_info
from .ops import hamming_distance, hamming_topk, pack_bits, unpack_bits

__version__ = "0.1.0"

__all__ = [
    "build_info",
    "hamming_distance",
    "hamming_topk",
    "pack_bits",
    "unpack_bits",
]
