"""Checks on the CUDA sources that need no GPU: what the compiler reports and what the code calls.

- Every kernel compiles for sm_90 without local memory (a stack frame) or register spills:
  ptxas's ``-v`` report for each ``csrc/cuda/*.cu``, read entry by entry.
- No CUDA op synchronises the host (``.item()``, ``.cpu()``, stream or device synchronisation):
  it would stall the stream on every call and break CUDA-graph capture. The one exception is
  ``hamming_range``, whose output size depends on the data: it reads one count, once.
- Launches go through ``gpu::launch`` (one call site for the GPU and the emulation), and the
  files that call a torch GEMM hold TF32 off around it.
"""
import concurrent.futures
import os
import re
import shutil
import subprocess
import sysconfig

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
CUDA_SOURCES = sorted(f for f in os.listdir(CUDA_DIR) if f.endswith((".cu", ".cuh")))


def read(name):
    with open(os.path.join(CUDA_DIR, name)) as f:
        return re.sub(r"//[^\n]*", "", f.read())  # code only: comments may name what is forbidden


# Sources allowed exactly one read on the host, `.item` or `.cpu()` (an output whose size
# depends on the data).
ONE_SIZE_READ = {"hamming_range.cu"}


@pytest.mark.parametrize("name", CUDA_SOURCES)
def test_no_host_synchronisation(name):
    code = read(name)
    if name in ONE_SIZE_READ:
        reads = r"\.item\s*[<(]|\.cpu\s*\("
        assert len(re.findall(reads, code)) == 1, f"{name} reads more than the output size"
        code = re.sub(reads, "", code)
    for pattern in (r"\.item\s*[<(]", r"\.cpu\s*\(", r"kCPU", r"cudaDeviceSynchronize", r"cudaStreamSynchronize",
                    r"\.synchronize\s*\(", r"\.tolist\s*\("):
        assert not re.search(pattern, code), f"{name} synchronises the host ({pattern})"


@pytest.mark.parametrize("name", CUDA_SOURCES)
def test_launches_and_gemms(name):
    code = read(name)
    if name != "device_runtime.cuh":
        assert "<<<" not in code, f"{name} launches with <<<>>> instead of gpu::launch"
    if re.search(r"at::mm(_out)?\s*\(", code):
        assert "at::NoTF32Guard" in code, f"{name} runs a float32 GEMM without holding TF32 off"


def nvcc():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = os.path.join(home, "bin", "nvcc")
    return path if os.path.exists(path) else shutil.which("nvcc")


def ptxas_report(source):
    """{kernel (mangled): (stack bytes, spill store bytes, spill load bytes)} for sm_90."""
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    cmd = [nvcc(), "-cubin", "-arch=sm_90", "-O3", "-std=c++20", "--expt-relaxed-constexpr",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-D__CUDA_NO_HALF2_OPERATORS__", "-Xptxas=-v,-warn-lmem-usage,-warn-spills", *includes,
           os.path.join(CUDA_DIR, source), "-o", os.devnull]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    report, kernel = {}, None
    for line in run.stderr.splitlines():
        entry = re.search(r"Compiling entry function '(\w+)'", line)
        if entry:
            kernel = entry.group(1)
        usage = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if usage and kernel:
            report[kernel] = tuple(int(v) for v in usage.groups())
        if "Warning" in line and "lmem" in line.lower() and kernel:
            report[kernel] = report.get(kernel, (0, 0, 0)) + ("local memory",)
    return report


@pytest.mark.slow
@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch (its headers)")
def test_kernels_use_no_local_memory_and_do_not_spill():
    if nvcc() is None:
        pytest.skip("nvcc not found")
    sources = [s for s in CUDA_SOURCES if s.endswith(".cu")]
    jobs = int(os.environ.get("MAX_JOBS", "2"))
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        reports = dict(zip(sources, pool.map(ptxas_report, sources)))
    offenders = [f"{src}: {kernel} {usage}" for src, report in reports.items() for kernel, usage in report.items()
                 if usage != (0, 0, 0)]
    assert all(reports.values()), f"ptxas reported no kernels for {[s for s, r in reports.items() if not r]}"
    assert not offenders, "kernels with a stack frame or spills:\n" + "\n".join(offenders)
