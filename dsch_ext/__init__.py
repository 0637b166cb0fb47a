"""dsch_ext: deep unsupervised hashing (DSCH) made fast, as PyTorch ops.

``import dsch_ext`` loads the compiled kernels, which register ``torch.ops.dsch_ext.*``
(CPU always, CUDA when built with it), and exposes them as functions:

- :func:`pack_bits` / :func:`unpack_bits`: binary codes <-> faiss's packed bytes.
- :func:`hamming_distance`: all distances between packed codes.
- :func:`hamming_topk`: exact top-k by Hamming distance, ties to the lower index.
- :func:`hamming_range`: every code within a Hamming radius (range search), in index order.
- :func:`center_distances`: points x centres distances with autograd (sqeuclidean, cosine, dot).
- :func:`nearest_center`: k-means assignment in O(N + K) memory, ties to the lower index.
- :func:`gmm_log_resp`: the Gaussian-mixture E-step (full, tied, diag, spherical).
- :func:`segment_gram`: per-segment Gram matrices (the sparse M-step's second moments).
- :class:`KMeans`, :class:`GaussianMixture`: scikit-learn's estimators on any device.
- :class:`BinaryIndex`: a Hamming index with ids, range search, atomic save / checked load.

Submodules: :mod:`dsch_ext.evaluation` (mAP@k, PR curves), :mod:`dsch_ext.baselines` (LSH,
PCAH, ITQ). Subpackages, each for its own audience and imported only when asked for:
:mod:`dsch_ext.datasets` (data sets and the retrieval protocol's split), :mod:`dsch_ext.dsch`
(the DSCH method: trainer, losses, E-step, networks, augmentation, model files, runs),
:mod:`dsch_ext.distributed` (torch.distributed: communicators, the sharded index,
synchronised batch norm), :mod:`dsch_ext.faiss_compat` (faiss's binary flat indexes and index
files, for ``import dsch_ext.faiss_compat as faiss``) and :mod:`dsch_ext.cli` (the ``dsch``
command). The reproduction
bench behind ``dsch results`` is :mod:`dsch_ext.experiments`. docs/architecture.md shows the
layers.
"""
import importlib

from ._library import build_info
from . import baselines, evaluation
from ._version import __version__
from .cluster import KMeans
from .index import BinaryIndex, IndexFormatError, SearchStats
from .mixture import GaussianMixture
from .ops import (center_distances, gmm_log_resp, hamming_distance, hamming_range, hamming_topk, nearest_center,
                  pack_bits, segment_gram, unpack_bits)

__all__ = [
    "__version__",
    "BinaryIndex",
    "GaussianMixture",
    "IndexFormatError",
    "SearchStats",
    "KMeans",
    "build_info",
    "center_distances",
    "gmm_log_resp",
    "nearest_center",
    "hamming_distance",
    "hamming_range",
    "hamming_topk",
    "pack_bits",
    "segment_gram",
    "unpack_bits",
    "baselines",
    "evaluation",
]

_LAZY_SUBMODULES = {"datasets": ".datasets", "dsch": ".dsch", "experiments": ".experiments",
                    "distributed": ".distributed", "faiss_compat": ".faiss_compat", "cli": ".cli"}


def __getattr__(name):
    """The subpackages load on first use, so ``import dsch_ext`` stays the library alone."""
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(_LAZY_SUBMODULES[name], __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'dsch_ext' has no attribute {name!r}")
