"""GPU benchmark report: dsch_ext's CUDA ops on the workloads of benchmarks/WORKLOADS.md, timed with CUDA
events (warm-up first, median of several runs), answers checked against the CPU kernels,
each time set against a roofline and, where the workload names one, against its anchor written
in plain torch on the same GPU in the same run. Run by scripts/gpu_check.sh; prints one table.

Hamming roofline: a distance between B-bit codes costs B/32 32-bit popcounts (and as many
xors); an H100 retires 16 popcounts per clock per SM (CUDA C Programming Guide, arithmetic
instruction throughput, compute capability 9.0). "% popc roofline" = (nq * ndb * B/32) /
(SMs * 16 * clock) / time: one popcount per word of every code pair, however many passes the
op makes (the top-k makes two over the database plus a sample; the range search two).

GMM roofline (goal: the E-step at >= 40% of fp32): the stable full-covariance E-step
transforms every point by every precision factor, 2 N K D^2 flops (one N x D by D x KD GEMM);
fp32 peak = SMs * 128 lanes * 2 flops * clock (67 TFLOP/s on an H100 SXM). The anchor is
scikit-learn's formula in torch: the same GEMM through torch.matmul, then the norms and a
logsumexp, unfused. Centre distances and nearest centre are set against torch.cdist
(+ autograd, + min) like the CPU benchmarks (C1, C2; C1 also without autograd, so the
backward's share shows, and at D = 128, where the backward makes two passes a side); their
roofline column is left empty. G5 is G1 at D = 128 (the wide
tensor-core kernel).
The last rows set G1's E-step and a two-iteration G2 fit against scikit-learn's own
GaussianMixture on the same CUDA tensors (its array API path).

`--smoke` runs every row at tiny sizes, on the CPU when no GPU is visible, timed by the wall
clock: its figures mean nothing, but every code path of the report runs, so a GPU's rare and
short lease is not lost to an error in the report itself (benchmarks/test_gpu_report.py runs it).
"""
import argparse
import dataclasses
import math
import os
import subprocess
import time
import warnings

# scikit-learn's array API path (its GaussianMixture on CUDA tensors) needs this before scipy loads.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import torch

import dsch_ext


def sm_clock_hz():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        return float(out[0]) * 1e6
    except Exception:
        return 1.98e9  # H100 SXM boost clock


def median_time(clock, fn, args, repeats, warmups):
    """The median of `repeats` timed runs of fn(*args) after `warmups` untimed ones; clock(fn,
    args) runs it once and returns its seconds."""
    for _ in range(warmups):
        fn(*args)
    times = sorted(clock(fn, args) for _ in range(repeats))
    return times[len(times) // 2]


def cuda_clock(fn, args):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(*args)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def wall_clock(fn, args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def cuda_time(fn, *args, repeats=7):
    return median_time(cuda_clock, fn, args, repeats, warmups=2)


def wall_time(fn, *args, repeats=3):
    """cuda_time's stand-in off the GPU: wall-clock runs after one warm-up."""
    return median_time(wall_clock, fn, args, repeats, warmups=1)


H100_SMS = 132  # the rooflines' multiprocessors off the GPU (smoke runs only)


@dataclasses.dataclass
class Bench:
    """Where the report runs and how big: the workloads' sizes on a CUDA device, or (smoke)
    tiny ones on any device; check_cpu compares the answers with the CPU kernels'."""

    device: torch.device
    smoke: bool = False
    check_cpu: bool = True

    @property
    def on_gpu(self):
        return self.device.type == "cuda"

    def size(self, full, tiny):
        return tiny if self.smoke else full

    def time(self, fn, *args, repeats=7):
        if self.on_gpu:
            return cuda_time(fn, *args, repeats=1 if self.smoke else repeats)
        return wall_time(fn, *args, repeats=1)

    def multiprocessors(self):
        return torch.cuda.get_device_properties(self.device).multi_processor_count if self.on_gpu else H100_SMS

    def extra_memory(self, describe, fn, *args):
        """describe(bytes) of the peak memory a call allocates beyond its inputs and outputs
        (the CUDA allocator's statistics: on the GPU only)."""
        return describe(peak_extra_bytes(fn, *args)) if self.on_gpu else "extra memory not measured off the GPU"


def hamming_rows(bench):
    peak_popc = bench.multiprocessors() * 16 * sm_clock_hz()
    rows = []
    for wid, ndb, nq, nbits, k in bench.size([
        ("H1", 1_000_000, 1000, 64, 1000),
        ("H2", 1_000_000, 1000, 64, 10),
        ("H3", 1_000_000, 100, 256, 10),
        ("H4", 10_000_000, 100, 64, 1000),
        ("H5", 1_000_000, 1, 64, 100),
        ("H6", 1_000_000, 1000, 64, 100_000),
    ], [("H1", 3000, 7, 64, 50), ("H3", 3000, 3, 256, 10), ("H5", 3000, 1, 64, 100), ("H6", 3000, 7, 64, 2000)]):
        g = torch.Generator().manual_seed(0)
        db = torch.randint(0, 256, (ndb, nbits // 8), dtype=torch.uint8, generator=g)
        q = torch.randint(0, 256, (nq, nbits // 8), dtype=torch.uint8, generator=g)
        dbc, qc = db.to(bench.device), q.to(bench.device)
        got = dsch_ext.hamming_topk(qc, dbc, k)
        ok = "-"
        if bench.check_cpu:
            want = dsch_ext.hamming_topk(q, db, k)
            ok = str(torch.equal(want[0], got[0].cpu()) and torch.equal(want[1], got[1].cpu()))
        t = bench.time(dsch_ext.hamming_topk, qc, dbc, k)
        popc = nq * ndb * nbits / 32
        del got
        # The output takes 12 bytes a neighbour.
        extra = bench.extra_memory(lambda b: f"{b / (nq * k * 12):.2f}x the output beyond it",
                                   dsch_ext.hamming_topk, qc, dbc, k)
        rows.append((f"hamming_topk {wid}", f"{ndb}x{nbits}b nq={nq} k={k}", t * 1e3,
                     f"{nq * ndb / t / 1e9:.1f} G dist/s; {extra}",
                     f"{100 * popc / peak_popc / t:.1f}%", ok))
    ndb, nq, nbits = bench.size((1_000_000, 1000, 64), (3000, 7, 64))
    g = torch.Generator().manual_seed(1)
    db = torch.randint(0, 256, (ndb, nbits // 8), dtype=torch.uint8, generator=g)
    q = torch.randint(0, 256, (nq, nbits // 8), dtype=torch.uint8, generator=g)
    dbc, qc = db.to(bench.device), q.to(bench.device)
    for radius in (8, 22):
        got = dsch_ext.hamming_range(qc, dbc, radius)
        ok = "-"
        if bench.check_cpu:
            want = dsch_ext.hamming_range(q, db, radius)
            ok = str(all(torch.equal(a, b.cpu()) for a, b in zip(want, got)))
        t = bench.time(dsch_ext.hamming_range, qc, dbc, radius)
        popc = nq * ndb * nbits / 32
        rows.append((f"hamming_range R1 r={radius}", f"{ndb}x{nbits}b nq={nq}, {int(got[0][-1])} hits", t * 1e3,
                     f"{nq * ndb / t / 1e9:.1f} G dist/s", f"{100 * popc / peak_popc / t:.1f}%", ok))
    return rows


def fp32_peak(bench):
    return bench.multiprocessors() * 128 * 2 * sm_clock_hz()


def torch_gmm_full(x, means, prec_chol, log_weights):
    """scikit-learn's _estimate_log_gaussian_prob for full covariances, written in torch."""
    k, d, _ = prec_chol.shape
    y = (x @ prec_chol.permute(1, 0, 2).reshape(d, k * d)).view(-1, k, d)
    y = y - torch.einsum("kd,kde->ke", means, prec_chol)
    log_det = prec_chol.diagonal(dim1=1, dim2=2).log().sum(1)
    lp = -0.5 * (d * math.log(2 * math.pi) + y.square().sum(2)) + log_det + log_weights
    norm = torch.logsumexp(lp, 1)
    return lp - norm[:, None], norm


def gmm_model(n, k, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
    means = x[torch.randperm(n, generator=g)[:k]].clone()
    # precision factors of covariances ~ 0.05 I plus a random low-rank part: realistic spread
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64) * 0.05
    cov = a @ a.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64)
    prec_chol = torch.linalg.cholesky(torch.linalg.inv(cov))
    log_weights = torch.full((k,), -math.log(k), dtype=torch.float64)
    return x, means, prec_chol, log_weights


def gmm_rows(bench):
    rows = []
    peak = fp32_peak(bench)
    for wid, (n, k, d) in bench.size([("G1", (10_000, 1000, 64)), ("G1 x5", (50_000, 1000, 64)),
                                      ("G5", (10_000, 1000, 128))],
                                     [("G1", (300, 20, 64)), ("G5", (200, 10, 128))]):
        args64 = gmm_model(n, k, d)
        args32 = [a.float().to(bench.device) for a in args64]
        got_lr, got_norm = dsch_ext.gmm_log_resp(*args32, "full")
        ok = "-"
        if bench.check_cpu and n <= 10_000:
            want_lr, want_norm = dsch_ext.gmm_log_resp(*args64, "full")
            err_norm = ((got_norm.double().cpu() - want_norm).abs() / want_norm.abs().clamp_min(1)).max().item()
            err_resp = (got_lr.double().cpu().exp() - want_lr.exp()).abs().max().item()
            ok = f"{err_norm < 1e-4 and err_resp < 1e-4} (rel {err_norm:.1e}, resp {err_resp:.1e})"
        flops = 2 * n * k * d * d
        t = bench.time(dsch_ext.gmm_log_resp, *args32, "full")
        ta = bench.time(torch_gmm_full, *args32)
        a_lr, _ = torch_gmm_full(*args32)
        anchor_ok = (a_lr.exp() - got_lr.exp()).abs().max().item() < 1e-3
        rows.append((f"gmm_log_resp full f32 {wid}", f"N={n} K={k} D={d}", t * 1e3,
                     f"{flops / t / 1e12:.1f} TFLOP/s; torch {ta * 1e3:.2f} ms = {ta / t:.2f}x"
                     + ("" if anchor_ok else " (anchor differs!)"),
                     f"{100 * flops / peak / t:.1f}%", ok))
        args64c = [a.to(bench.device) for a in args64]
        t64 = bench.time(dsch_ext.gmm_log_resp, *args64c, "full", repeats=3)
        rows.append((f"gmm_log_resp full f64 {wid}", f"N={n} K={k} D={d}", t64 * 1e3,
                     f"{flops / t64 / 1e12:.1f} TFLOP/s", "-", "-"))
    n, k, d = bench.size((10_000, 1000, 64), (300, 20, 64))
    x, means, _, lw = [a.float().to(bench.device) for a in gmm_model(n, k, d)]
    prec = torch.rand(k, d, device=bench.device) + 0.5
    got_lr, _ = dsch_ext.gmm_log_resp(x, means, prec, lw, "diag")
    want_lr, _ = torch_gmm_diag(x.double(), means.double(), prec.double(), lw.double())
    ok = f"{(got_lr.double().exp() - want_lr.exp()).abs().max().item() < 1e-4} (vs float64 torch)"
    flops = 4 * n * k * d  # (a p - b) and its square: two FMAs a coordinate
    t = bench.time(dsch_ext.gmm_log_resp, x, means, prec, lw, "diag")
    ta = bench.time(torch_gmm_diag, x, means, prec, lw)
    rows.append(("gmm_log_resp diag f32 G3", f"N={n} K={k} D={d}", t * 1e3,
                 f"{flops / t / 1e12:.1f} TFLOP/s; torch {ta * 1e3:.2f} ms = {ta / t:.2f}x",
                 f"{100 * flops / peak / t:.1f}%", ok))
    return rows


def torch_gmm_diag(x, means, prec, log_weights):
    """scikit-learn's _estimate_log_gaussian_prob for diagonal covariances, written in torch."""
    d = x.shape[1]
    sq = ((x[:, None, :] * prec[None] - (means * prec)[None]) ** 2).sum(2)
    lp = -0.5 * (d * math.log(2 * math.pi) + sq) + prec.log().sum(1) + log_weights
    norm = torch.logsumexp(lp, 1)
    return lp - norm[:, None], norm


def center_rows(bench):
    rows = []
    g = torch.Generator().manual_seed(1)
    n, k = bench.size((65_536, 1000), (700, 30))
    # D = 64: C1, one pass over the gradient a side; D = 128: two passes a side (64 coordinates each).
    for d in (64, 128):
        x = torch.randn(n, d, generator=g)
        c = torch.randn(k, d, generator=g)
        xc, cc = x.to(bench.device).requires_grad_(), c.to(bench.device).requires_grad_()
        w = torch.randn(n, k, device=bench.device)

        def ours():
            return torch.autograd.grad((dsch_ext.center_distances(xc, cc) * w).sum(), (xc, cc))

        def anchor():
            return torch.autograd.grad((torch.cdist(xc, cc).square() * w).sum(), (xc, cc))

        got, want = ours(), anchor()
        ok = str(all(torch.allclose(a, b, rtol=1e-3, atol=1e-2) for a, b in zip(got, want)))
        t, ta = bench.time(ours), bench.time(anchor)
        name = "C1" if d == 64 else "C1 at D=128"
        rows.append((f"center_distances fwd+bwd {name}", f"N={n} K={k} D={d}", t * 1e3,
                     f"torch.cdist {ta * 1e3:.2f} ms = {ta / t:.2f}x", "-", ok))
        # The forward alone (the 3xTF32 tile), so that the backward's share (its passes over the
        # gradient and the combine kernels) shows, against the static bound C3 per 64 coordinates.
        xd, cd = xc.detach(), cc.detach()
        tf, tfa = bench.time(dsch_ext.center_distances, xd, cd), bench.time(lambda: torch.cdist(xd, cd).square())
        rows.append((f"center_distances fwd {name}", f"N={n} K={k} D={d}", tf * 1e3,
                     f"torch.cdist {tfa * 1e3:.2f} ms = {tfa / tf:.2f}x; backward {(t - tf) * 1e3:.2f} ms "
                     f"(cdist's {(ta - tfa) * 1e3:.2f})", "-", "-"))

    d = 64
    n, k = bench.size((1_000_000, 1000), (5000, 30))
    x = torch.randn(n, d, generator=g).to(bench.device)
    c = torch.randn(k, d, generator=g).to(bench.device)
    idx, dist = dsch_ext.nearest_center(x, c)
    aidx = torch.cdist(x, c).min(1).indices
    ok = f"{(idx == aidx).float().mean().item() * 100:.3f}% same index"
    if bench.check_cpu:
        checked = min(n, 100_000)
        cidx, _ = dsch_ext.nearest_center(x[:checked].cpu(), c.cpu())
        ok += f", CPU {torch.equal(cidx, idx[:checked].cpu())}"
    t = bench.time(dsch_ext.nearest_center, x, c)
    ta = bench.time(lambda: torch.cdist(x, c).min(1))
    extra = bench.extra_memory(lambda b: f"{b / 2**20:.0f} MiB beyond the output", dsch_ext.nearest_center, x, c)
    rows.append(("nearest_center C2", f"N={n} K={k} D={d}", t * 1e3,
                 f"cdist+min {ta * 1e3:.2f} ms = {ta / t:.2f}x; {extra}", "-", ok))
    return rows


def peak_extra_bytes(fn, *args):
    """Peak GPU memory a call allocates beyond its inputs, less its outputs."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn(*args)
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - base
    del out
    return torch.cuda.max_memory_allocated() - base - kept


def torch_lloyd(x, centers, iterations):
    """The plain-torch Lloyd loop K1 is measured against: cdist + argmin + index_add_."""
    k = centers.shape[0]
    for _ in range(iterations):
        labels = torch.cdist(x, centers).argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).clamp_min(1).to(x.dtype)
        centers = sums / counts[:, None]
    return centers


def kmeans_rows(bench):
    """K1: KMeans.fit, N = 1M, K = 1000, D = 64, 10 Lloyd iterations from the same initial
    centres, against the plain-torch loop; E1: DSCH's E-step on the GPU against scikit-learn's
    on this machine's CPU."""
    rows = []
    g = torch.Generator().manual_seed(2)
    n, k, d, its = bench.size((1_000_000, 1000, 64, 10), (2000, 20, 64, 3))
    x = torch.randn(n, d, generator=g).to(bench.device)
    init = x[torch.randperm(n, generator=g)[:k].to(bench.device)].clone()
    fit = lambda: dsch_ext.KMeans(k, init=init, n_init=1, max_iter=its, tol=0.0).fit(x)  # noqa: E731
    km = fit()
    t = bench.time(fit, repeats=3)
    ta = bench.time(torch_lloyd, x, init, km.n_iter_, repeats=3)
    rows.append(("KMeans.fit K1", f"N={n} K={k} D={d}, {km.n_iter_} iterations", t * 1e3,
                 f"plain torch Lloyd {ta * 1e3:.1f} ms = {ta / t:.2f}x", "-", "-"))
    if bench.check_cpu:
        from dsch_ext.experiments.estep import estep_comparison

        n_codes, m1, m2 = bench.size((5000, 1000, 100), (300, 10, 4))
        codes = torch.randint(0, 2, (n_codes, 64), generator=g).double() * 2 - 1
        try:
            rec = estep_comparison(codes, m1, m2, iterations=3, more_iterations=0, device=str(bench.device))
        except ImportError as e:  # the anchor is scikit-learn's
            return rows + [("DSCH E-step E1", "-", "-", f"not run: {e}", "-", "-")]
        rows.append(("DSCH E-step E1 (GPU vs scikit-learn CPU)",
                     f"{n_codes} codes x 64 bits, m1={m1} full, m2={m2}, 3 EM its", rec["dsch_ext_seconds"] * 1e3,
                     f"scikit-learn {rec['sklearn_seconds']:.2f} s = {rec['speedup']:.0f}x", "-",
                     f"lower bounds {rec['dsch_ext_lower_bound']:.4f} / {rec['sklearn_lower_bound']:.4f}"))
    return rows


def sklearn_array_api_rows(bench, iterations=2):
    """G1 and G2 on the same device's tensors against scikit-learn's own GaussianMixture there
    (its array API path: array_api_dispatch=True, init_params='random'): an E-step
    (predict_proba) and a fit of `iterations` EM steps from the same start, float64. Rows
    saying why when scikit-learn or array-api-compat is missing."""
    timer, device = bench.time, bench.device
    try:
        import array_api_compat  # noqa: F401  (scikit-learn's array API path needs it)
        import sklearn
        from sklearn.mixture import GaussianMixture as SkGaussianMixture
    except ImportError as e:
        return [("scikit-learn array API G1/G2", "-", "-", f"not run: {e}", "-", "-")]
    n, k, d = bench.size((10_000, 1000, 64), (300, 6, 4))
    x, means, prec_chol, log_weights = [a.to(device) for a in gmm_model(n, k, d)]
    init = dict(weights_init=log_weights.exp(), means_init=means,
                precisions_init=prec_chol @ prec_chol.transpose(1, 2))

    def fit(cls, its):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tol=0: "did not converge"
            return cls(k, covariance_type="full", init_params="random", max_iter=its, tol=0, **init).fit(x)

    rows = []
    workload = f"N={n} K={k} D={d}, {device.type} float64 tensors"
    with sklearn.config_context(array_api_dispatch=True):
        sk = fit(SkGaussianMixture, 1)
        args = (x, sk.means_, sk.precisions_cholesky_, torch.log(sk.weights_))
        want = sk.predict_proba(x)
        lr, _ = dsch_ext.gmm_log_resp(*args, "full")
        ok = f"{(lr.exp() - want).abs().max().item() < 1e-8} (responsibilities)"
        ta = timer(sk.predict_proba, x)
        t = timer(dsch_ext.gmm_log_resp, *args, "full")
        t32 = timer(dsch_ext.gmm_log_resp, *[a.float() for a in args], "full")
        rows.append(("gmm_log_resp full vs sklearn G1", workload, t * 1e3,
                     f"sklearn predict_proba {ta * 1e3:.1f} ms = {ta / t:.2f}x; float32 {t32 * 1e3:.2f} ms = "
                     f"{ta / t32:.2f}x", "-", ok))
        ref = fit(SkGaussianMixture, iterations)
        ours = fit(dsch_ext.GaussianMixture, iterations)
        gap = abs(float(ours.lower_bound_) - float(ref.lower_bound_)) / abs(float(ref.lower_bound_))
        # Three runs each, not seven: scikit-learn's fit loops over the components in Python.
        ta = timer(fit, SkGaussianMixture, iterations, repeats=3)
        t = timer(fit, dsch_ext.GaussianMixture, iterations, repeats=3)
        rows.append(("GaussianMixture.fit vs sklearn G2", f"{workload}, {iterations} EM iterations", t * 1e3,
                     f"sklearn fit {ta * 1e3:.1f} ms = {ta / t:.2f}x", "-", f"{gap < 1e-6} (lower bound rel {gap:.1e})"))
    return rows


GROUPS = (hamming_rows, gmm_rows, center_rows, kmeans_rows, sklearn_array_api_rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-check", action="store_true", help="skip the CPU answer checks")
    parser.add_argument("--smoke", action="store_true",
                        help="every row at tiny sizes (on the CPU when no GPU is visible): checks the report "
                             "runs, its figures mean nothing")
    args = parser.parse_args()
    if not (args.smoke or torch.cuda.is_available()):
        raise SystemExit("gpu_report.py needs a CUDA device (or --smoke)")
    bench = Bench(torch.device("cuda" if torch.cuda.is_available() else "cpu"), args.smoke, not args.no_check)
    name = torch.cuda.get_device_name(bench.device) if bench.on_gpu else "CPU"
    print(f"device: {name}, torch {torch.__version__}, dsch_ext {dsch_ext.__version__}"
          + (" (smoke run: tiny sizes, the figures mean nothing)" if bench.smoke else ""))
    header = ("op", "workload", "median ms", "rate", "% roofline", "equals CPU")
    print_row(header)
    # Each group's rows as soon as they are measured: a step time limit still leaves the rest.
    for group in GROUPS:
        for row in group(bench):
            print_row(row)


WIDTHS = (34, 40, 10, 60, 10, 30)


def print_row(row):
    cells = [f"{c:.3f}" if isinstance(c, float) else str(c) for c in row]
    print(" | ".join(c.ljust(w) for c, w in zip(cells, WIDTHS)), flush=True)


if __name__ == "__main__":
    main()
