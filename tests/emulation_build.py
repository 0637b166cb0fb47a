"""Builds the test-only library of emulated CUDA kernels: ``torch.ops.dsch_ext_emulated.*``.

Every ``csrc/cuda/*.cu`` is compiled by the host C++ compiler with ``-DDSCH_EXT_EMULATION``
(``csrc/cuda/device_runtime.cuh`` then maps CUDA's names onto ``csrc/emulation/emulator.h``)
together with the emulator and the schemas, into ``build/emulation/<variant>/`` with ninja
(incremental: an unchanged tree rebuilds in a second). Variants:

- ``plain``: ``-O1`` with libstdc++'s assertions (what ``tests/test_emulation.py`` loads);
- ``production``: the same with the GPU's launch constants instead of the small ones
  (``csrc/cuda/launch_constants.cuh``), for one test per kernel as it runs on a GPU, and the
  tensor-core product formed from warp shuffles as on a GPU before sm_80;
- ``tsan``: ThreadSanitizer (a missing ``__syncthreads`` shows as a data race);
- ``asan``: AddressSanitizer + UndefinedBehaviorSanitizer (out-of-bounds indices, overflow).

The sanitizer variants are loaded by a Python started with the sanitizer runtime preloaded
(``sanitizer_env``); ``scripts/test.sh`` runs the emulation tests that way.

    python tests/emulation_build.py [--variant plain|tsan|asan ...]   # prints the library paths
"""
import argparse
import fcntl
import os
import shlex
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
LIB_NAME = "libdsch_ext_emulated.so"

VARIANT_FLAGS = {
    "plain": ["-O1", "-D_GLIBCXX_ASSERTIONS"],
    # The GPU's launch constants (csrc/cuda/launch_constants.cuh), not the small ones, and
    # the tensor-core product in the shuffles a GPU before sm_80 runs (mma_tf32.cuh).
    "production": ["-O1", "-D_GLIBCXX_ASSERTIONS", "-DDSCH_EMULATION_PRODUCTION_CONSTANTS",
                   "-DDSCH_EMULATION_MMA_SHUFFLES"],
    # -g1: line tables only, so a report names file and line, at two thirds of -g's compile time.
    "tsan": ["-O1", "-g1", "-fsanitize=thread", "-D_GLIBCXX_ASSERTIONS"],
    "asan": ["-O1", "-g1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=undefined", "-D_GLIBCXX_ASSERTIONS"],
}
RUNTIME = {"tsan": "libtsan.so", "asan": "libasan.so"}


def sources():
    cuda = sorted(os.path.join(CSRC, "cuda", f) for f in os.listdir(os.path.join(CSRC, "cuda")) if f.endswith(".cu"))
    emulation = sorted(os.path.join(CSRC, "emulation", f)
                       for f in os.listdir(os.path.join(CSRC, "emulation")) if f.endswith(".cpp"))
    return cuda + emulation


def library_path(variant):
    return os.path.join(ROOT, "build", "emulation", variant, LIB_NAME)


def _write_ninja(build_dir, variant):
    import torch
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "g++")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = " ".join(f"-isystem {shlex.quote(p)}" for p in cpp_extension.include_paths())
    flags = " ".join(["-std=c++20", "-fPIC", "-g0" if variant in ("plain", "production") else "", "-DDSCH_EXT_EMULATION",
                      f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Wall", "-Wno-unused-function",
                      "-Wno-unknown-pragmas", *VARIANT_FLAGS[variant]])
    libdirs = " ".join(f"-L{shlex.quote(p)}" for p in cpp_extension.library_paths())
    sanitize = [f for f in VARIANT_FLAGS[variant] if f.startswith("-fsanitize")]
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {cxx}",
        f"cflags = {flags} {includes} -I{shlex.quote(sysconfig.get_paths()['include'])}",
        f"ldflags = -shared {' '.join(sanitize)} {libdirs} -lc10 -ltorch_cpu -lpthread",
        "rule cxx",
        "  command = $cxx -MMD -MF $out.d -x c++ $cflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX (emulation) $in",
        # The emulator itself is not instrumented under TSan (it announces CUDA's orderings
        # to TSan instead, see emulator.cpp); only the kernels are.
        f"runtime_cflags = {flags.replace('-fsanitize=thread', '-DDSCH_EMULATION_TSAN')} {includes}",
        "rule cxx_runtime",
        "  command = $cxx -MMD -MF $out.d -x c++ $runtime_cflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX (emulator) $in",
        "rule link",
        "  command = $cxx $in $ldflags -o $out",
        "  description = LINK $out",
    ]
    objects = []
    for src in sources():
        obj = os.path.join(build_dir, "obj", os.path.basename(src) + ".o")
        objects.append(obj)
        rule = "cxx_runtime" if os.path.basename(src) == "emulator.cpp" else "cxx"
        lines.append(f"build {obj}: {rule} {src}")
    lines.append(f"build {library_path(variant)}: link {' '.join(objects)}")
    lines.append(f"default {library_path(variant)}")
    text = "\n".join(lines) + "\n"
    path = os.path.join(build_dir, "build.ninja")
    old = open(path).read() if os.path.exists(path) else None
    if old != text:
        with open(path, "w") as f:
            f.write(text)


def build(variant="plain", verbose=False):
    """Builds (or brings up to date) one variant and returns the library's path."""
    if variant not in VARIANT_FLAGS:
        raise ValueError(f"variant must be one of {sorted(VARIANT_FLAGS)}, got {variant!r}")
    build_dir = os.path.dirname(library_path(variant))
    os.makedirs(os.path.join(build_dir, "obj"), exist_ok=True)
    ninja = os.path.join(os.path.dirname(sys.executable), "ninja")
    cmd = [ninja if os.path.exists(ninja) else "ninja", "-C", build_dir]
    jobs = os.environ.get("MAX_JOBS")
    if jobs:
        cmd += ["-j", jobs]
    # One build at a time per variant: pytest-xdist's workers each load the library.
    with open(os.path.join(build_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _write_ninja(build_dir, variant)
        result = subprocess.run(cmd, capture_output=not verbose, text=True)
    if result.returncode != 0:
        out = (result.stdout or "") + (result.stderr or "")
        raise RuntimeError(f"building the emulation library ({variant}) failed:\n{out[-6000:]}")
    return library_path(variant)


def load_ops():
    """torch.ops.dsch_ext_emulated: the library DSCH_EMULATION_LIBRARY names (a sanitizer
    build), else the plain build, loaded once a process."""
    import torch

    path = os.environ.get("DSCH_EMULATION_LIBRARY") or build("plain")
    if not hasattr(torch.ops, "dsch_ext_emulated") or not hasattr(torch.ops.dsch_ext_emulated, "pack_bits"):
        torch.ops.load_library(path)
    return torch.ops.dsch_ext_emulated


def sanitizer_env(variant, env=None):
    """The environment for a Python that loads the `variant` library: its runtime preloaded."""
    env = dict(os.environ if env is None else env)
    env["DSCH_EMULATION_LIBRARY"] = library_path(variant)
    if variant in RUNTIME:
        cxx = env.get("CXX", "g++")
        runtime = subprocess.run([cxx, f"-print-file-name={RUNTIME[variant]}"], capture_output=True,
                                 text=True, check=True).stdout.strip()
        # libstdc++ right after the runtime: ASan resolves its __cxa_throw interceptor when it
        # starts, and Python loads libstdc++ only later (exceptions then abort the process).
        stdcxx = subprocess.run([cxx, "-print-file-name=libstdc++.so.6"], capture_output=True, text=True,
                                check=True).stdout.strip()
        env["LD_PRELOAD"] = f"{runtime}:{stdcxx}"
        # One OpenMP thread: libgomp's own barriers are invisible to TSan, so the CPU reference
        # ops run threaded would show races that are not there.
        env["OMP_NUM_THREADS"] = "1"
        env["TSAN_OPTIONS"] = "halt_on_error=1 second_deadlock_stack=1 report_signal_unsafe=0"
        env["ASAN_OPTIONS"] = "detect_leaks=0 halt_on_error=1 abort_on_error=0"
        env["UBSAN_OPTIONS"] = "halt_on_error=1 print_stacktrace=1"
    return env


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", nargs="+", default=["plain"], choices=sorted(VARIANT_FLAGS))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    for variant in args.variant:
        print(build(variant, verbose=args.verbose))


if __name__ == "__main__":
    main()
