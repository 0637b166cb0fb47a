"""Multi-index search against the flat scan as the database grows: query time of both routes,
the tables' build time and memory, for N = 10^6, 10^7, 10^8 codes (``--sizes``), on the
workloads of ``test_mih_bench.py`` (M1-M4: learned-like 64-bit codes at k = 10 and 1000,
uniform 64-bit codes at k = 10, learned-like 128-bit codes at k = 10), 1,000 queries.
Every answer is checked equal to the flat scan's before it is timed. Fits the growth exponent
of each curve (the slope of log time against log N) and writes ``mih_scaling.json`` (and
``mih_scaling.png`` with matplotlib) to ``--out``.

    python benchmarks/mih_scaling.py --out docs                # 10^6-10^8 (about 15 minutes, 2 cores, 8 GB)
    python benchmarks/mih_scaling.py --quick --out /tmp/mih    # 2^17 and 2^19 codes, seconds

Times are the best of ``--repeats`` runs of the whole batch, each route timed in its own block.
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dsch_ext  # noqa: E402
from dsch_ext._atomic import atomic_write  # noqa: E402
from mih_workloads import workload  # noqa: E402

CASES = {"M1": ("learned", 64, 10), "M2": ("learned", 64, 1000), "M3": ("uniform", 64, 10),
         "M4": ("learned", 128, 10)}


def best_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(n, nq, repeats, log):
    rows = []
    by_data = {}
    for wid, (kind, nbits, k) in CASES.items():
        by_data.setdefault((kind, nbits), []).append((wid, k))
    for (kind, nbits), cases in by_data.items():
        start = time.perf_counter()
        database, queries = workload(kind, n, nbits, nq, seed=nbits)
        log(f"  {kind} {nbits}-bit codes: generated in {time.perf_counter() - start:.0f} s")
        flat, multi = dsch_ext.BinaryIndex(nbits), dsch_ext.BinaryIndex(nbits, method="mih")
        flat.add(database)
        multi.add(database)
        start = time.perf_counter()
        multi.search(queries[:1], 1)
        build_s = time.perf_counter() - start
        for wid, k in cases:
            want = flat.search(queries, k)
            got_d, got_i, stats = multi.search(queries, k, stats=True)
            assert torch.equal(got_d, want[0]) and torch.equal(got_i, want[1]), f"{wid} at N={n}: answers differ"
            flat_s = best_seconds(lambda: flat.search(queries, k), repeats)
            time.sleep(0.5)
            mih_s = best_seconds(lambda: multi.search(queries, k), repeats)
            row = dict(id=wid, kind=kind, nbits=nbits, k=k, n=n, queries=nq, flat_s=flat_s, mih_s=mih_s,
                       speedup=flat_s / mih_s, build_s=build_s, codes_bytes=database.numel(),
                       tables_bytes=multi.tables_nbytes(), substrings=stats.substrings, route=stats.route,
                       probed_queries=stats.probed_queries, candidates_per_query=stats.candidates / nq,
                       kth_distance_median=float(want[0][:, -1].float().median()))
            log(f"  {wid} N={n:.0e} k={k}: flat {flat_s * 1e3:.0f} ms, mih {mih_s * 1e3:.0f} ms "
                f"({row['speedup']:.1f}x, {stats.route}, {row['probed_queries']} probed), build {build_s:.1f} s, "
                f"tables {row['tables_bytes'] / 2**20:.0f} MiB = {row['tables_bytes'] / row['codes_bytes']:.2f}x "
                f"the codes")
            rows.append(row)
        del flat, multi, database, queries
    return rows


def growth(rows, key):
    out = {}
    for wid in CASES:
        pts = sorted((r["n"], r[key]) for r in rows if r["id"] == wid)
        if len(pts) >= 2:
            x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            out[wid] = float(np.polyfit(x, y, 1)[0])
    return out


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for wid, (kind, nbits, k) in CASES.items():
        pts = sorted((r["n"], r["flat_s"], r["mih_s"], r["tables_bytes"] + r["codes_bytes"]) for r in rows
                     if r["id"] == wid)
        if not pts:
            continue
        n = [p[0] for p in pts]
        line, = axes[0].loglog(n, [p[2] for p in pts], "o-", label=f"{wid} mih ({kind}, {nbits} b, k={k})")
        axes[0].loglog(n, [p[1] for p in pts], "x--", color=line.get_color(), alpha=0.6, label=f"{wid} flat scan")
        axes[1].loglog(n, [p[3] / 2**30 for p in pts], "o-", color=line.get_color(), label=f"{wid} codes + tables")
    axes[0].set(xlabel="codes N", ylabel="seconds per 1,000 queries", title="query time")
    axes[1].set(xlabel="codes N", ylabel="GiB", title="memory (codes + tables)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for mih_scaling.json / .png")
    parser.add_argument("--sizes", default="1e6,1e7,1e8", help="database sizes (comma-separated)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2^17 and 2^19 codes, 50 queries")
    args = parser.parse_args(argv)
    sizes = [1 << 17, 1 << 19] if args.quick else [int(float(s)) for s in args.sizes.split(",")]
    nq = 50 if args.quick else args.queries
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for n in sizes:
        print(f"N = {n:,}", flush=True)
        rows += measure(n, nq, args.repeats, lambda line: print(line, flush=True))
    result = {"rows": rows, "growth_flat": growth(rows, "flat_s"), "growth_mih": growth(rows, "mih_s"),
              "threads": torch.get_num_threads(), "machine": os.uname().machine,
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "date": time.strftime("%Y-%m-%d")}
    atomic_write(os.path.join(args.out, "mih_scaling.json"),
                 lambda f: f.write(json.dumps(result, indent=1).encode()))
    print("growth exponents, flat:", result["growth_flat"], "mih:", result["growth_mih"])
    if plot(rows, os.path.join(args.out, "mih_scaling.png")):
        print("wrote", os.path.join(args.out, "mih_scaling.png"))


if __name__ == "__main__":
    main()
