"""Cost as the work grows, on the CPU: DSCH's fine GMM (full covariance, the E-step's main
cost) per EM iteration against the number of codes N and of components m1, next to
scikit-learn's; Hamming top-k time and memory against the database size; the fine GMM on
two gloo processes against one. Fits the growth
exponent of each curve (the slope on log-log axes) and writes ``scaling.json`` and
``scaling.png`` to ``--out``.

    python benchmarks/scaling.py --out docs            # the full sweep (about 35 minutes on 2 cores)
    python benchmarks/scaling.py --quick --out /tmp/s  # tiny sizes, seconds

Codes: synthetic 64-bit codes shaped like a trained network's (10 classes x 100 sub-centres
of random signs, each bit flipped with probability 0.08), as float64 +-1, which is what the
E-step fits. One EM iteration = fit(max_iter=2) - fit(max_iter=1) from the same cheap
initialisation (``random_from_data``, seed 0), so initialisation and the final E-step cancel;
dsch_ext runs with DSCH's ``resp_threshold=1e-8``. scikit-learn runs where the previous size
suggests its EM iteration ends within ``--sklearn-limit`` seconds.
"""
import argparse
import json
import os
import resource
import time
import warnings

import numpy as np
import torch

import dsch_ext
from dsch_ext._atomic import atomic_write

FULL = {"n": [5_000, 20_000, 69_000, 1_000_000], "m1_n": 20_000, "m1": [100, 1000, 4000], "m1_at_n": 1000,
        "hamming": [10**6, 10**7, 10**8], "queries": 100, "k": 100, "distributed_n": 69_000}
QUICK = {"n": [600, 1_200, 2_400], "m1_n": 1_200, "m1": [10, 20, 40], "m1_at_n": 20,
         "hamming": [10**4, 10**5], "queries": 8, "k": 10, "distributed_n": 600}


def synthetic_codes(n: int, nbits: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    classes = rng.choice([-1.0, 1.0], size=(10, nbits))
    sub = classes[rng.integers(0, 10, 1000)] * np.where(rng.random((1000, nbits)) < 0.15, -1.0, 1.0)
    codes = sub[rng.integers(0, 1000, n)]
    return codes * np.where(rng.random((n, nbits)) < 0.08, -1.0, 1.0)


def _fit_seconds(make, X, iterations):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        make(iterations).fit(X)
        return time.perf_counter() - t0


def em_iteration_seconds(X: np.ndarray, k: int, library: str, distributed: bool = False) -> float:
    """Seconds of one EM iteration of a full-covariance GMM with k components on X (this
    rank's rows of it when ``distributed``)."""
    if library == "dsch_ext":
        data = torch.from_numpy(X)

        def make(its):
            return dsch_ext.GaussianMixture(k, covariance_type="full", max_iter=its, tol=0.0,
                                            init_params="random_from_data", random_state=0, resp_threshold=1e-8,
                                            distributed=distributed)
    else:
        from sklearn.mixture import GaussianMixture

        data = X

        def make(its):
            return GaussianMixture(k, covariance_type="full", max_iter=its, tol=0.0, init_params="random_from_data",
                                   random_state=0)
    return max(_fit_seconds(make, data, 2) - _fit_seconds(make, data, 1), 1e-9)


def growth_exponent(xs, ys) -> float:
    """Slope of log y against log x (least squares)."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _sweep(values, measure, predicted_limit=None):
    """measure(v) for each v; a measurement whose predicted value (linear growth from the last
    one) exceeds predicted_limit is skipped (None)."""
    out, last = [], None
    for v in values:
        if predicted_limit is not None and last is not None and last[1] * v / last[0] > predicted_limit:
            out.append(None)
            continue
        seconds = measure(v)
        out.append(seconds)
        last = (v, seconds)
        print(f"  {v:>10,}: {seconds:.3f} s", flush=True)
    return out


def gmm_scaling(sizes, limit):
    measured = {}  # (n, k, library): the point both sweeps share is measured once

    def point(n, k, library):
        if (n, k, library) not in measured:
            measured[n, k, library] = em_iteration_seconds(synthetic_codes(n), k, library)
        return measured[n, k, library]

    k, n_m = sizes["m1_at_n"], sizes["m1_n"]
    print(f"one EM iteration vs N (m1 = {k})", flush=True)
    ours = _sweep(sizes["n"], lambda n: point(n, k, "dsch_ext"))
    theirs = _sweep(sizes["n"], lambda n: point(n, k, "sklearn"), limit)
    print(f"one EM iteration vs m1 (N = {n_m})", flush=True)
    ours_m = _sweep(sizes["m1"], lambda m: point(n_m, m, "dsch_ext"))
    theirs_m = _sweep(sizes["m1"], lambda m: point(n_m, m, "sklearn"), limit)
    return {"n": sizes["n"], "dsch_ext_vs_n": ours, "sklearn_vs_n": theirs, "m1_n": sizes["m1_n"],
            "m1": sizes["m1"], "dsch_ext_vs_m1": ours_m, "sklearn_vs_m1": theirs_m, "m1_at_n": k}


def _distributed_rank(rank, world_size, init_method, n, k, out_dir):
    """One rank of the two-process run: its shard of the same codes, gloo, one thread."""
    torch.set_num_threads(1)
    import dsch_ext.distributed as ddist
    from dsch_ext.distributed.shard import shard_range

    comm = ddist.init(backend="gloo", init_method=init_method, rank=rank, world_size=world_size, timeout=600.0)
    start, stop = shard_range(n, comm)
    seconds = em_iteration_seconds(synthetic_codes(n)[start:stop], k, "dsch_ext", distributed=True)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"seconds": seconds}, f)
    ddist.shutdown()


def distributed_scaling(sizes, out_dir):
    """One EM iteration on one process (1 and 2 threads) and on two gloo processes of one
    thread each, same codes and components."""
    import multiprocessing as mp
    import tempfile

    n, k = sizes["distributed_n"], sizes["m1_at_n"]
    print(f"two gloo processes vs one (N = {n}, m1 = {k})", flush=True)
    threads = torch.get_num_threads()
    one = {}
    for t in (1, 2):
        torch.set_num_threads(t)
        one[t] = em_iteration_seconds(synthetic_codes(n), k, "dsch_ext")
        print(f"  one process, {t} thread(s): {one[t]:.3f} s", flush=True)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(dir=os.path.abspath(out_dir)) as tmp:
        ctx = mp.get_context("spawn")
        init = f"file://{tmp}/rendezvous"
        procs = [ctx.Process(target=_distributed_rank, args=(r, 2, init, n, k, tmp)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(1800)
        ranks = []
        for r in range(2):
            with open(os.path.join(tmp, f"rank{r}.json")) as f:
                ranks.append(json.load(f)["seconds"])
    two = max(ranks)
    print(f"  two processes, 1 thread each: {two:.3f} s", flush=True)
    return {"n": n, "m1": k, "one_process_1_thread": one[1], "one_process_2_threads": one[2],
            "two_processes": two, "speedup_over_1_thread": one[1] / two, "ratio_to_2_threads": one[2] / two}


def _current_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _hamming_point(n, queries, k, conn):
    """In a fresh process: the median of three top-k calls over n random codes, and the peak
    resident memory the calls add beyond the data."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (queries, 8), generator=g, dtype=torch.uint8)
    db = torch.randint(0, 256, (n, 8), generator=g, dtype=torch.uint8)
    before = _current_rss_bytes()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        dsch_ext.hamming_topk(q, db, k)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send((sorted(times)[1], max(0, peak - before)))
    conn.close()


def hamming_scaling(sizes):
    """Top-k of ``queries`` random 64-bit queries over random databases of growing size, each
    size in a fresh process (so its peak memory is its own): the median of three calls, the
    database's bytes and the memory the search adds."""
    import multiprocessing as mp

    print(f"hamming_topk vs database size ({sizes['queries']} queries, k = {sizes['k']})", flush=True)
    ctx = mp.get_context("spawn")
    seconds, extra = [], []
    for n in sizes["hamming"]:
        here, there = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_hamming_point, args=(n, sizes["queries"], sizes["k"], there))
        proc.start()
        t, m = here.recv()
        proc.join()
        seconds.append(t)
        extra.append(m)
        print(f"  {n:>12,}: {t:.3f} s, {m / 2**20:.1f} MiB beyond the {8 * n / 2**20:.0f} MiB database", flush=True)
    return {"database": sizes["hamming"], "seconds": seconds, "database_bytes": [8 * n for n in sizes["hamming"]],
            "search_extra_bytes": extra, "queries": sizes["queries"], "k": sizes["k"]}


def exponents(record):
    def fit(xs, ys):
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        return growth_exponent(*zip(*pts)) if len(pts) >= 2 else None

    g, h = record["gmm"], record["hamming"]
    return {"dsch_ext_vs_n": fit(g["n"], g["dsch_ext_vs_n"]), "sklearn_vs_n": fit(g["n"], g["sklearn_vs_n"]),
            "dsch_ext_vs_m1": fit(g["m1"], g["dsch_ext_vs_m1"]), "sklearn_vs_m1": fit(g["m1"], g["sklearn_vs_m1"]),
            "hamming_vs_database": fit(h["database"], h["seconds"])}


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g, h, e = record["gmm"], record["hamming"], record["exponents"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, xs, key, xlabel in ((axes[0], g["n"], "vs_n", "codes N"), (axes[1], g["m1"], "vs_m1", "components m1")):
        for lib, style in (("dsch_ext", "o-"), ("sklearn", "s--")):
            pts = [(x, y) for x, y in zip(xs, g[f"{lib}_{key}"]) if y is not None]
            if pts:
                slope = e[f"{lib}_{key}"]
                label = lib + (f" (slope {slope:.2f})" if slope is not None else "")
                ax.plot(*zip(*pts), style, label=label)
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="seconds per EM iteration")
        ax.legend()
    axes[0].set_title(f"full-covariance GMM, m1 = {g['m1_at_n']}")
    axes[1].set_title(f"full-covariance GMM, N = {g['m1_n']:,}")
    ax = axes[2]
    ax.plot(h["database"], h["seconds"], "o-", label=f"time (slope {e['hamming_vs_database']:.2f})")
    ax.set(xscale="log", yscale="log", xlabel="database codes (64 bits)", ylabel="seconds",
           title=f"hamming_topk, {h['queries']} queries, k = {h['k']}")
    twin = ax.twinx()
    twin.plot(h["database"], [b / 2**20 for b in h["database_bytes"]], "^:", color="tab:gray", label="database (MiB)")
    twin.plot(h["database"], [max(b, 1) / 2**20 for b in h["search_extra_bytes"]], "s:", color="tab:red",
              label="search's extra memory (MiB)")
    twin.set(yscale="log", ylabel="MiB")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a check that it runs)")
    parser.add_argument("--out", default="docs", help="directory for scaling.json and scaling.png (default docs)")
    parser.add_argument("--sklearn-limit", type=float, default=600.0, dest="sklearn_limit",
                        help="skip a scikit-learn size whose EM iteration is predicted to take longer, in seconds "
                             "(default 600)")
    parser.add_argument("--parts", nargs="+", default=["gmm", "hamming", "distributed"],
                        choices=["gmm", "hamming", "distributed"])
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "scaling.json")
    record = {}
    if os.path.exists(path) and not args.quick:  # a part run alone keeps the other's figures
        with open(path) as f:
            record = json.load(f)
    record.update(machine={"cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                           "dsch_ext": dsch_ext.__version__, "date": time.strftime("%Y-%m-%d")})

    def save():
        text = json.dumps(record, indent=1) + "\n"
        atomic_write(path, lambda f: f.write(text.encode()))

    for part, measure in (("gmm", lambda: gmm_scaling(sizes, args.sklearn_limit)),
                          ("hamming", lambda: hamming_scaling(sizes)),
                          ("distributed", lambda: distributed_scaling(sizes, args.out))):
        if part in args.parts:
            record[part] = measure()
            save()  # a later part that fails keeps this one
    if "gmm" in record and "hamming" in record:
        record["exponents"] = exponents(record)
        plot(record, os.path.join(args.out, "scaling.png"))
        print("growth exponents:", json.dumps(record["exponents"]))
        save()
    return record


if __name__ == "__main__":
    main()
