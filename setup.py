"""Build script of dsch_ext: the C++ kernels always, the CUDA kernels when asked or possible.

Switches (environment):
  DSCH_EXT_CUDA=auto|1|0   auto (default) builds the CUDA kernels when torch is a CUDA build
                           and nvcc is found; 1 requires them (fails loudly otherwise); 0 never.
  CUDA_HOME                the CUDA toolkit (default: $CUDA_PATH, /usr/local/cuda, or nvcc on PATH).
  TORCH_CUDA_ARCH_LIST     GPU architectures; default with no GPU visible: "8.0;9.0+PTX".
  MAX_JOBS                 parallel compile jobs (each CUDA file needs ~2 GB of memory).
The build prints what it decided. See README.md ("Building") for the two install commands.
"""
import glob
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

import torch  # noqa: E402  (setup needs the torch it builds against)

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def log(msg):
    print(f"[dsch_ext build] {msg}", file=sys.stderr, flush=True)


def find_cuda_home():
    """The CUDA toolkit root, or None. torch guesses /usr/local from a /usr/local/bin/nvcc
    wrapper and then cannot link cudart, so follow nvcc to its real location."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def decide_cuda():
    switch = os.environ.get("DSCH_EXT_CUDA", "auto").strip().lower()
    if switch not in ("auto", "", "1", "0", "on", "off", "true", "false", "yes", "no"):
        raise SystemExit(f"DSCH_EXT_CUDA must be auto, 1 or 0, got {switch!r}")
    if switch in ("0", "off", "false", "no"):
        return None, "CPU kernels only (DSCH_EXT_CUDA=0)"
    home = find_cuda_home()
    torch_cuda = torch.version.cuda
    if switch in ("1", "on", "true", "yes"):
        if torch_cuda is None:
            raise SystemExit(f"DSCH_EXT_CUDA=1 but torch {torch.__version__} is a CPU-only build")
        if home is None:
            raise SystemExit("DSCH_EXT_CUDA=1 but no nvcc was found: set CUDA_HOME")
        return home, f"CPU + CUDA kernels (DSCH_EXT_CUDA=1, CUDA_HOME={home})"
    if torch_cuda is None:
        return None, f"CPU kernels only (torch {torch.__version__} is a CPU build)"
    if home is None:
        return None, "CPU kernels only (torch has CUDA but no nvcc was found; set CUDA_HOME)"
    return home, f"CPU + CUDA kernels (torch CUDA {torch_cuda}, CUDA_HOME={home})"


def write_build_info(with_cuda, arch_list):
    torch_version = torch.__version__
    with open(os.path.join(ROOT, "dsch_ext", "_build_info.py"), "w") as f:
        f.write('"""Written by setup.py: what this copy of dsch_ext was compiled against."""\n')
        f.write(f"TORCH_VERSION = {torch_version!r}\n")
        f.write(f"WITH_CUDA = {bool(with_cuda)!r}\n")
        f.write(f"CUDA_ARCH_LIST = {arch_list!r}\n")


cuda_home, decision = decide_cuda()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home
from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME at import)

if cuda_home:
    cpp_extension.CUDA_HOME = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # torch's arch detection raises IndexError with no device visible.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "detected from the visible GPU") if cuda_home else None
log(decision)
if cuda_home:
    log(f"CUDA architectures: {arch_list}")
log(f"torch {torch.__version__}, MAX_JOBS={os.environ.get('MAX_JOBS', 'default')}")

sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
cxx_flags = ["-O3", "-g0", "-fopenmp"]  # torch sets the C++ standard
if platform.machine() in ("x86_64", "AMD64"):
    cxx_flags.append("-mpopcnt")  # x86-64-v2 baseline; makes popcount one instruction
# ptxas warns when a kernel uses local memory or spills registers (tests/test_cuda_sources.py
# turns those warnings into failures for the hot kernels).
nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xptxas=-warn-lmem-usage,-warn-spills"]
define_macros = []
Extension = cpp_extension.CppExtension
if cuda_home:
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    Extension = cpp_extension.CUDAExtension
    define_macros.append(("DSCH_EXT_WITH_CUDA", "1"))
write_build_info(cuda_home, arch_list)
link_args = ["-fopenmp", "-g0"]
if platform.system() == "Linux":
    # Link the shared libstdc++ by its file name: a toolchain that finds only libstdc++.a for
    # -lstdc++ (some CUDA images ship only that) would put a private copy into _C.so, whose
    # stream code, bound to _C.so by -Bsymbolic-functions, meets the data of torch's libstdc++
    # and crashes at the first error message built with c10::str.
    link_args.append("-l:libstdc++.so.6")

ext = Extension(
    "dsch_ext._C",
    sources,
    define_macros=define_macros,
    extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
    extra_link_args=link_args,
)

torch_base = torch.__version__.split("+")[0]
setup(
    # The embedded images' directory is a data package (no __init__.py), named so that
    # setuptools ships its files as package data.
    packages=find_packages(include=["dsch_ext", "dsch_ext.*"]) + ["dsch_ext.datasets.fashion_mnist"],
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    # The compiled ops only load against the torch they were built with.
    install_requires=[f"torch=={torch_base}", "numpy", "tqdm"],
)
