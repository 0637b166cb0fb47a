"""Checks on the CUDA sources that need no GPU: what the compiler reports and what the code calls.

- Every kernel compiles for sm_90 without local memory (a stack frame) or register spills:
  ptxas's ``-v`` report for each ``csrc/cuda/*.cu``, read entry by entry.
- No CUDA op synchronises the host (``.item()``, ``.cpu()``, stream or device synchronisation):
  it would stall the stream on every call and break CUDA-graph capture. The one exception is
  ``hamming_range``, whose output size depends on the data: it reads one count, once.
- Launches go through ``gpu::launch`` (one call site for the GPU and the emulation), and the
  files that call a torch GEMM hold TF32 off around it.
"""
import os
import re

import pytest

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


def ptxas_report(text):
    """{kernel (mangled): (stack bytes, spill store bytes, spill load bytes)} from ptxas's -v
    report of one source."""
    report, kernel = {}, None
    for line in text.splitlines():
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
def test_kernels_use_no_local_memory_and_do_not_spill(sm90_cubins):
    reports = {}
    for source in (s for s in CUDA_SOURCES if s.endswith(".cu")):
        with open(os.path.join(sm90_cubins, os.path.splitext(source)[0] + ".ptxas")) as f:
            reports[source] = ptxas_report(f.read())
    offenders = [f"{src}: {kernel} {usage}" for src, report in reports.items() for kernel, usage in report.items()
                 if usage != (0, 0, 0)]
    assert all(reports.values()), f"ptxas reported no kernels for {[s for s, r in reports.items() if not r]}"
    assert not offenders, "kernels with a stack frame or spills:\n" + "\n".join(offenders)
