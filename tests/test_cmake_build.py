"""The CMake build: compiles the same sources into a library that torch.ops.load_library
loads, then runs the Hamming test-suite against it in a fresh process (one process cannot
register the dsch_ext namespace twice). Slow (a full compile); CI runs it.

Without a GPU the library is built without its CUDA kernels (the package build, the ptxas
checks and the emulation compile those already; a full CUDA compile here took a quarter of
CI), and the CUDA configuration is checked on its own: CMake configures with
DSCH_EXT_CUDA=ON and compiles one kernel source with its flags. With a GPU visible, or with
DSCH_TEST_CMAKE_CUDA=1, the library is built whole with its kernels."""
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.utils

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def _cmake():
    # The venv's cmake (pip install cmake) first: the Debian 3.25 is too old for torch's CUDA.
    exe = shutil.which("cmake", path=os.path.dirname(sys.executable)) or shutil.which("cmake")
    if exe is None:
        pytest.skip("cmake is not installed (pip install cmake)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split()[2]
    if tuple(int(x) for x in version.split(".")[:2]) < (3, 26):
        pytest.skip(f"cmake {version} is too old (needs >= 3.26: pip install cmake)")
    return exe


def _nvcc():
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def _configure(cmake, build, with_cuda, nvcc):
    args = [
        cmake, "-S", ROOT, "-B", str(build), "-G", "Ninja",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-DPython3_EXECUTABLE={sys.executable}",
    ]
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # venv's ninja
    if torch.version.cuda is not None and nvcc is not None:  # a CUDA torch's CMake config needs the toolkit
        home = os.path.dirname(os.path.dirname(nvcc))
        args.append(f"-DCUDA_TOOLKIT_ROOT_DIR={home}")
        env.setdefault("CUDA_HOME", home)
    if with_cuda:
        # One architecture keeps the compile short; a visible GPU picks its own.
        args += ["-DDSCH_EXT_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}"]
        env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0" if not torch.cuda.is_available() else "")
        if not env["TORCH_CUDA_ARCH_LIST"]:
            del env["TORCH_CUDA_ARCH_LIST"]
    subprocess.run(args, check=True, env=env)
    return env


@pytest.mark.slow
def test_cmake_library_passes_hamming_tests(tmp_path):
    cmake = _cmake()
    nvcc = _nvcc()
    can_cuda = torch.version.cuda is not None and nvcc is not None
    whole_cuda = can_cuda and (torch.cuda.is_available() or os.environ.get("DSCH_TEST_CMAKE_CUDA") == "1")
    if can_cuda and not whole_cuda:
        cuda_build = tmp_path / "build-cuda"
        env = _configure(cmake, cuda_build, True, nvcc)
        ninja = shutil.which("ninja", path=env["PATH"])
        targets = subprocess.run([ninja, "-C", str(cuda_build), "-t", "targets", "all"], env=env, check=True,
                                 capture_output=True, text=True).stdout
        kernel = next(line.split(":")[0] for line in targets.splitlines() if line.split(":")[0].endswith("pack_bits.cu.o"))
        subprocess.run([cmake, "--build", str(cuda_build), "--target", kernel], check=True, env=env)
    build = tmp_path / "build"
    env = _configure(cmake, build, whole_cuda, nvcc)
    subprocess.run([cmake, "--build", str(build), "-j", os.environ.get("MAX_JOBS", "2")], check=True, env=env)
    library = build / "libdsch_ext_ops.so"
    assert library.exists()

    env["DSCH_EXT_LIBRARY"] = str(library)
    check = subprocess.run(
        [sys.executable, "-c", "import dsch_ext, json; print(json.dumps(dsch_ext.build_info))"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stderr
    assert str(library) in check.stdout
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.join(ROOT, "tests", "test_hamming.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
