"""faiss's GPU spelling of the binary flat index: ``GpuIndexBinaryFlat`` and the cloners between
CPU and GPU. Here a GPU index is an :class:`IndexBinaryFlat` whose codes live on a CUDA device
(dsch_ext's CUDA Hamming kernels search it); ``StandardGpuResources`` is accepted for faiss's
signatures and holds nothing (torch's caching allocator and streams are used)."""
from typing import Optional

import torch

from ._indexes import IndexBinaryFlat


class StandardGpuResources:
    """Accepted where faiss takes GPU resources; its settings change nothing here."""

    def setTempMemory(self, size: int) -> None:  # noqa: N802 (faiss's names)
        pass

    def noTempMemory(self) -> None:  # noqa: N802
        pass

    def setPinnedMemory(self, size: int) -> None:  # noqa: N802
        pass


class GpuIndexBinaryFlatConfig:
    def __init__(self, device: int = 0):
        self.device = device


def _cuda_device(config: Optional[GpuIndexBinaryFlatConfig]) -> torch.device:
    index = 0 if config is None else int(config.device)
    if not torch.cuda.is_available():
        raise RuntimeError("GpuIndexBinaryFlat needs a CUDA device and a CUDA build of torch; none is available")
    if not 0 <= index < torch.cuda.device_count():
        raise RuntimeError(f"GPU device {index} does not exist ({torch.cuda.device_count()} devices)")
    return torch.device("cuda", index)


class GpuIndexBinaryFlat(IndexBinaryFlat):
    """``GpuIndexBinaryFlat(res, d)`` or ``GpuIndexBinaryFlat(res, cpu_index)`` (a copy of
    its codes on the GPU), with faiss's ``copyFrom`` / ``copyTo``."""

    def __init__(self, res: StandardGpuResources, d_or_index, config: Optional[GpuIndexBinaryFlatConfig] = None):
        source = d_or_index if isinstance(d_or_index, IndexBinaryFlat) else None
        super().__init__(source.d if source is not None else d_or_index, device=_cuda_device(config))
        if source is not None:
            self.copyFrom(source)

    def copyFrom(self, index: IndexBinaryFlat) -> None:  # noqa: N802
        self.d, self.code_size = index.d, index.code_size
        with self._lock:
            self._codes = index._state()[0].to(self.device)

    def copyTo(self, index: IndexBinaryFlat) -> None:  # noqa: N802
        index.d, index.code_size = self.d, self.code_size
        with index._lock:
            index._codes = self._state()[0].to(index.device)


def index_binary_cpu_to_gpu(res: StandardGpuResources, device: int, index: IndexBinaryFlat, options=None):
    """A GPU copy of a flat index (faiss's cloner)."""
    if type(index) is not IndexBinaryFlat:
        raise RuntimeError(f"only an IndexBinaryFlat can be copied to a GPU, got {type(index).__name__}")
    return GpuIndexBinaryFlat(res, index, GpuIndexBinaryFlatConfig(device))


def index_binary_gpu_to_cpu(index: IndexBinaryFlat) -> IndexBinaryFlat:
    """A CPU copy of a (GPU) flat index."""
    if not isinstance(index, IndexBinaryFlat):
        raise RuntimeError(f"only a flat binary index can be copied to the CPU, got {type(index).__name__}")
    out = IndexBinaryFlat(index.d)
    out._codes = index._state()[0].cpu()
    return out
