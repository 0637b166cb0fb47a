"""GPU benchmark report: dsch_ext's CUDA ops on the PERF.md workloads, timed with CUDA
events (warm-up first, median of several runs), answers checked against the CPU kernels,
and each time set against a roofline. Run by scripts/gpu_check.sh; prints one table.

Hamming roofline: a distance between B-bit codes costs B/32 32-bit popcounts (and as many
xors); an H100 retires 16 popcounts per clock per SM (CUDA C Programming Guide, arithmetic
instruction throughput, compute capability 9.0). The top-k reads every distance once for
its histogram, so "% popc roofline" = (nq * ndb * B/32) / (SMs * 16 * clock) / time.
"""
import argparse
import subprocess

import torch

import dsch_ext


def sm_clock_hz():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        return float(out[0]) * 1e6
    except Exception:
        return 1.98e9  # H100 SXM boost clock


def cuda_time(fn, *args, repeats=7):
    for _ in range(2):
        fn(*args)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def hamming_rows(check_cpu):
    props = torch.cuda.get_device_properties(0)
    peak_popc = props.multi_processor_count * 16 * sm_clock_hz()
    rows = []
    for wid, ndb, nq, nbits, k in [
        ("H1", 1_000_000, 1000, 64, 1000),
        ("H2", 1_000_000, 1000, 64, 10),
        ("H3", 1_000_000, 100, 256, 10),
        ("H1 k=5000", 1_000_000, 1000, 64, 5000),
        ("1 query", 1_000_000, 1, 64, 100),
        ("10M x 64b", 10_000_000, 100, 64, 1000),
    ]:
        g = torch.Generator().manual_seed(0)
        db = torch.randint(0, 256, (ndb, nbits // 8), dtype=torch.uint8, generator=g)
        q = torch.randint(0, 256, (nq, nbits // 8), dtype=torch.uint8, generator=g)
        dbc, qc = db.cuda(), q.cuda()
        got = dsch_ext.hamming_topk(qc, dbc, k)
        ok = "-"
        if check_cpu:
            want = dsch_ext.hamming_topk(q, db, k)
            ok = str(torch.equal(want[0], got[0].cpu()) and torch.equal(want[1], got[1].cpu()))
        t = cuda_time(dsch_ext.hamming_topk, qc, dbc, k)
        popc = nq * ndb * nbits / 32
        rows.append((f"hamming_topk {wid}", f"{ndb}x{nbits}b nq={nq} k={k}", t * 1e3,
                     f"{nq * ndb / t / 1e9:.1f} G dist/s", f"{100 * popc / peak_popc / t:.1f}%", ok))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-check", action="store_true", help="skip the CPU answer checks")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "gpu_report.py needs a CUDA device"
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, dsch_ext {dsch_ext.__version__}")
    rows = hamming_rows(not args.no_check)
    header = ("op", "workload", "median ms", "rate", "% roofline", "equals CPU")
    widths = [max(len(str(r[i])) if not isinstance(r[i], float) else 10 for r in rows + [header]) for i in range(6)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        cells = [f"{c:.3f}" if isinstance(c, float) else str(c) for c in r]
        print(" | ".join(c.ljust(w) for c, w in zip(cells, widths)))


if __name__ == "__main__":
    main()
