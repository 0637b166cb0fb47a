"""dsch_ext: deep unsupervised hashing (DSCH) made fast, as PyTorch ops.

``import dsch_ext`` loads the compiled kernels, which register ``torch.ops.dsch_ext.*``
(CPU always, CUDA when built with it), and exposes them as functions:

- :func:`pack_bits` / :func:`unpack_bits`: binary codes <-> faiss's packed bytes.
- :func:`hamming_distance`: all distances between packed codes.
- :func:`hamming_topk`: exact top-k by Hamming distance, ties to the lower index.
- :func:`center_distances`: points x centres distances with autograd (sqeuclidean, cosine, dot).
- :func:`nearest_center`: k-means assignment in O(N + K) memory, ties to the lower index.
- :func:`gmm_log_resp`: the Gaussian-mixture E-step (full, tied, diag, spherical).
- :func:`segment_gram`: per-segment Gram matrices (the sparse M-step's second moments).
- :class:`KMeans`, :class:`GaussianMixture`: scikit-learn's estimators on any device.
- :class:`BinaryIndex`: a Hamming index with ids, range search, atomic save / checked load.

Submodules: :mod:`dsch_ext.evaluation` (mAP@k, PR curves), :mod:`dsch_ext.baselines` (LSH,
PCAH, ITQ), :mod:`dsch_ext.data` (Fashion-MNIST, CIFAR-10, arrays, the retrieval protocol).
"""
from ._library import build_info
from . import baselines, data, evaluation
from .cluster import KMeans
from .index import BinaryIndex, IndexFormatError
from .mixture import GaussianMixture
from .ops import (center_distances, gmm_log_resp, hamming_distance, hamming_topk, nearest_center, pack_bits,
                  segment_gram, unpack_bits)

__version__ = "0.1.0"

__all__ = [
    "BinaryIndex",
    "GaussianMixture",
    "IndexFormatError",
    "KMeans",
    "build_info",
    "center_distances",
    "gmm_log_resp",
    "nearest_center",
    "hamming_distance",
    "hamming_topk",
    "pack_bits",
    "segment_gram",
    "unpack_bits",
    "baselines",
    "data",
    "evaluation",
]
