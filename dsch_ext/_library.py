"""Loads the compiled kernels, which register the ``torch.ops.dsch_ext`` operators.

Normally that is the extension module ``dsch_ext._C`` built by ``pip install``. Setting
``DSCH_EXT_LIBRARY=/path/to/libdsch_ext_ops.so`` loads a library built by CMake instead
(``torch.ops.load_library``). This module must not define ops or Python logic.
"""
import importlib
import os

import torch

LIBRARY_ENV = "DSCH_EXT_LIBRARY"


def _load():
    path = os.environ.get(LIBRARY_ENV)
    if path:
        if not os.path.isfile(path):
            raise ImportError(f"{LIBRARY_ENV}={path!r} does not name a file")
        torch.ops.load_library(path)
        return {"source": path, "torch_version": torch.__version__, "with_cuda": None}
    try:
        importlib.import_module("dsch_ext._C")
    except ImportError as exc:
        here = os.path.dirname(os.path.abspath(__file__))
        if not any(name.startswith("_C.") for name in os.listdir(here)):
            raise ImportError(
                f"dsch_ext's compiled kernels (dsch_ext._C) are not in {here}. If that is the "
                "source tree, Python is importing it instead of the installed package: install "
                "with `pip install --no-build-isolation .` and run from another directory (or run "
                "`pytest`, not `python -m pytest`, from the repository root)."
            ) from exc
        try:
            from . import _build_info
        except ImportError:
            raise ImportError(f"dsch_ext._C in {here} cannot be loaded ({exc}): reinstall dsch_ext") from exc
        if _build_info.TORCH_VERSION != torch.__version__:
            raise ImportError(
                f"dsch_ext was compiled against torch {_build_info.TORCH_VERSION} but torch "
                f"{torch.__version__} is installed: reinstall dsch_ext "
                "(`pip install --no-build-isolation .`)."
            ) from exc
        raise ImportError(f"dsch_ext._C in {here} cannot be loaded ({exc}): reinstall dsch_ext") from exc
    from . import _build_info

    return {
        "source": "dsch_ext._C",
        "torch_version": _build_info.TORCH_VERSION,
        "with_cuda": _build_info.WITH_CUDA,
        "cuda_arch_list": _build_info.CUDA_ARCH_LIST,
    }


build_info = _load()
