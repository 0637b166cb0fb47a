"""Shared fixtures: the devices to test on (CUDA whenever a GPU is visible), the kernels
built once for sm_90; the cases a sanitizer run of the emulated kernels takes."""
import collections
import fcntl
import os
import sys
import zlib

import pytest
import torch

import dsch_ext  # noqa: F401  (registers the ops before any test imports them)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# benchmarks/ on the path: the sm_90 build below and the static-bound test use its sass_bounds.py.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


def pytest_collection_modifyitems(config, items):
    """With DSCH_EMULATION_CASES=sample (scripts/test_emulation_sanitizers.sh), each test
    keeps its first parameter set and a fixed quarter of the others. Under the sanitizers the
    emulated kernels run many times slower, and the plain run has taken every case already; a
    race or an out-of-bounds index shows in any case that runs the code, and every test (so
    every kernel and route it covers) still runs."""
    if os.environ.get("DSCH_EMULATION_CASES", "all") != "sample":
        return
    by_test = collections.defaultdict(list)
    for item in items:
        by_test[item.nodeid.split("[")[0]].append(item)
    kept = set()
    for cases in by_test.values():
        kept.update(id(c) for i, c in enumerate(cases)
                    if i == 0 or zlib.crc32(c.nodeid.encode()) % 4 == 0)
    config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept])
    items[:] = [item for item in items if id(item) in kept]


@pytest.fixture(scope="session")
def sm90_cubins(tmp_path_factory):
    """Every csrc/cuda/*.cu built once for sm_90 by benchmarks/sass_bounds.py's nvcc command:
    the directory of <name>.cubin and <name>.ptxas (ptxas's -v report), which the ptxas checks
    and the static-bound test share."""
    if torch.version.cuda is None:
        pytest.skip("needs a CUDA build of torch (its headers)")
    import sass_bounds

    if sass_bounds.nvcc() is None:
        pytest.skip("nvcc not found")
    # Under pytest-xdist each worker runs session fixtures: the first to take the lock builds into
    # the run's shared temporary directory, the others wait and read the same build.
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out = base / "sm90"
    with open(base / "sm90.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "complete").exists():
            out.mkdir(exist_ok=True)
            sass_bounds.compile_cubins(sorted(f for f in os.listdir(sass_bounds.CUDA_DIR) if f.endswith(".cu")), str(out))
            (out / "complete").touch()
    return str(out)


@pytest.fixture
def generator():
    """A fresh seeded generator per test: inputs are random but reproducible."""
    return torch.Generator().manual_seed(torch.initial_seed() % (2**31))
