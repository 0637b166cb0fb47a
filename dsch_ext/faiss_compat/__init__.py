"""faiss's binary flat indexes, id selectors and index files on dsch_ext's Hamming kernels: a
faiss user changes one import (``import dsch_ext.faiss_compat as faiss``) and nothing else.

``_indexes`` holds the indexes and ``knn_hamming``, ``_selectors`` the id selectors and search
parameters, ``_io`` faiss's binary index file format (both ways), ``_gpu`` the GPU spellings.
What remains different from faiss by design is listed in docs/binary-index.md.
"""
import numpy as np
import torch

from ._gpu import (GpuIndexBinaryFlat, GpuIndexBinaryFlatConfig, StandardGpuResources, index_binary_cpu_to_gpu,
                   index_binary_gpu_to_cpu)
from ._indexes import (METRIC_L2, ArgumentError, IndexBinaryFlat, IndexBinaryIDMap, IndexBinaryIDMap2,
                       knn_hamming)
from ._io import (FaissFormatError, deserialize_index_binary, read_index_binary, serialize_index_binary,
                  write_index_binary)
from ._selectors import (IDSelector, IDSelectorAll, IDSelectorAnd, IDSelectorArray, IDSelectorBatch,
                         IDSelectorBitmap, IDSelectorNot, IDSelectorOr, IDSelectorRange, IDSelectorXOr,
                         SearchParameters)


def vector_to_array(v) -> np.ndarray:
    """A copy of ``v`` as a numpy array (faiss's, for its C++ vectors; here e.g. an ID map's
    ``id_map``)."""
    return np.array(v)


def popcount64(x: int) -> int:
    """The set bits of a 64-bit integer."""
    return bin(int(x) & (2**64 - 1)).count("1")


_FACTORY = {"BFlat": IndexBinaryFlat, "IDMap,BFlat": IndexBinaryIDMap, "IDMap2,BFlat": IndexBinaryIDMap2}


def index_binary_factory(d: int, description: str):
    """faiss's factory for the indexes here: ``"BFlat"``, ``"IDMap,BFlat"``, ``"IDMap2,BFlat"``."""
    kind = _FACTORY.get(str(description).replace(" ", ""))
    if kind is None:
        raise RuntimeError(f"index_binary_factory: {description!r} is not one of {', '.join(map(repr, _FACTORY))} "
                           "(dsch_ext.faiss_compat has the flat binary indexes only)")
    return kind(d) if kind is IndexBinaryFlat else kind(IndexBinaryFlat(d))


def omp_set_num_threads(n: int) -> None:
    """The threads the CPU searches use (torch's intra-op threads)."""
    torch.set_num_threads(int(n))


def omp_get_max_threads() -> int:
    return torch.get_num_threads()


__all__ = [
    "METRIC_L2", "ArgumentError", "FaissFormatError", "GpuIndexBinaryFlat", "GpuIndexBinaryFlatConfig", "IDSelector",
    "IDSelectorAll", "IDSelectorAnd", "IDSelectorArray", "IDSelectorBatch", "IDSelectorBitmap", "IDSelectorNot",
    "IDSelectorOr", "IDSelectorRange", "IDSelectorXOr", "IndexBinaryFlat", "IndexBinaryIDMap", "IndexBinaryIDMap2",
    "SearchParameters", "StandardGpuResources", "deserialize_index_binary", "index_binary_cpu_to_gpu",
    "index_binary_factory", "index_binary_gpu_to_cpu", "knn_hamming", "popcount64", "omp_get_max_threads", "omp_set_num_threads", "read_index_binary",
    "serialize_index_binary", "vector_to_array", "write_index_binary",
]
