"""The float32 answers of the tensor-core kernels (3xTF32), their accuracy and what NaN and
Inf give, checked on every backend that runs them: the CPU kernels, the CUDA kernels under the
CPU emulation, and the CUDA kernels on a GPU whenever one is visible (``scripts/gpu_check.sh``
runs the ``cuda`` cases).

The emulation forms each product exactly and sums in k order; the tensor cores read the
operands' top bits and truncate within a block of products. The claims hold for both by their
derivation (``csrc/common/tf32_math.h``), and only a GPU shows the second, so these tests
compare with float64 references and bounds, never with a model of one accumulation order
(``tests/test_emulation.py`` checks the emulated kernels bit for bit against such a model).
"""
import math

import pytest
import torch

import dsch_ext  # noqa: F401  (registers the CPU and CUDA ops)
import emulation_build

BACKENDS = ["cpu", pytest.param("emulated", marks=[pytest.mark.emulation, pytest.mark.slow])]
BACKENDS += ["cuda"] if torch.cuda.is_available() else []
TF32X3_EPSILON = 2.0**-20  # kTf32x3Epsilon


class Backend:
    """backend.<op>(*args): torch.ops.dsch_ext.<op> on the CPU or the GPU, or the emulated CUDA
    kernel, with the tensors moved to its device and the results brought back to the CPU."""

    def __init__(self, name):
        self.name = name
        self.device = "cuda" if name == "cuda" else "cpu"
        self.ops = emulation_build.load_ops() if name == "emulated" else torch.ops.dsch_ext

    def __getattr__(self, op):
        fn = getattr(self.ops, op)

        def run(*args):
            out = fn(*(a.to(self.device) if isinstance(a, torch.Tensor) else a for a in args))
            return tuple(o.cpu() for o in out) if isinstance(out, (tuple, list)) else out.cpu()

        return run


@pytest.fixture(params=BACKENDS)
def backend(request):
    return Backend(request.param)


@pytest.fixture(params=[b for b in BACKENDS if b != "cpu"])
def gpu_kernel(request):
    """The CUDA kernels only, emulated or on a GPU (the CPU ops refuse NaN and Inf)."""
    return Backend(request.param)


# D = 13, 64: the split-at-use kernel with warps of 32 x 16; 100: with warps of 16 x 32 (128
# coordinates); 130: the chunked kernel with the staged split. The first pair's coordinates
# have halfway mantissas (1 + 2^-11 rounds away from zero to 1 + 2^-10 in TF32).
@pytest.mark.parametrize("n,k,d", [(37, 11, 13), (65, 70, 64), (66, 67, 100), (20, 67, 130)])
def test_float32_inner_products_are_within_the_3xtf32_bound(backend, n, k, d, generator):
    x = torch.randn(n, d, generator=generator)
    c = torch.randn(k, d, generator=generator)
    x[0, 0], c[0, 0] = 1 + 2**-11, -(1 + 2**-11)
    got = backend.center_distances(x, c, "dot").double()
    exact = x.double() @ c.double().T
    scale = x.double().norm(dim=1)[:, None] * c.double().norm(dim=1)[None, :]
    # The bound the nearest-centre recheck relies on, (d + 8) kTf32x3Epsilon |x| |c|; one TF32
    # product alone errs by about 1e-3 relative and misses it.
    assert ((got + exact).abs() <= (d + 8) * TF32X3_EPSILON * scale).all()


@pytest.mark.parametrize("d", [9, 64, 100, 140])
def test_nearest_center_rounding_ties_go_to_the_lower_index(backend, d, generator):
    # Centre pairs m +- v around each point m, in eighths: the direct distances are exact and
    # equal, the expanded |c|^2 - 2 <x, c> (|c|^2 ~ 4e6 d) rounds either way, so only the
    # recheck on direct distances gives the lower index every time.
    m = torch.round(torch.randn(20, d, generator=generator) * 2**14) / 8
    v = torch.randint(-8, 9, (20, d), generator=generator) / 8
    c = torch.stack([m + v, m - v], 1).reshape(40, d)
    index, dist = backend.nearest_center(m, c)
    assert torch.equal(index, torch.arange(0, 40, 2))
    assert torch.equal(dist, (v.double() ** 2).sum(1).float())


def full_gmm(k, d, generator):
    """Means, precision factors and log-weights of a float32 'full' GMM, held in float64."""
    means = torch.randn(k, d, generator=generator, dtype=torch.float64)
    a = torch.randn(k, d, d, generator=generator, dtype=torch.float64) * 0.3
    prec = torch.linalg.cholesky(a @ a.transpose(1, 2) + torch.eye(d, dtype=torch.float64))
    log_w = torch.log_softmax(torch.randn(k, generator=generator, dtype=torch.float64), 0)
    return means, prec, log_w


def float64_log_resp(x, means, prec, log_w):
    """The float64 CPU E-step on the float32 inputs' exact values."""
    return torch.ops.dsch_ext.gmm_log_resp(*(t.double() for t in (x, means, prec, log_w)), "full", 0.0)


def assert_within_1e_5(got, want):
    assert ((got.double() - want).abs() <= 1e-5 * want.abs().clamp(min=1)).all()


# D = 16, 40, 64: the split-at-use kernel padded to 16 and 64 coordinates; 70, 100, 128 its
# 128-coordinate form, two column tiles a component; at (70, 37, 70) the 74 tiles' column groups
# of 13 are rounded up to 14, so that none splits a component, and two point tiles share them.
@pytest.mark.parametrize("n,k,d", [(70, 9, 40), (33, 4, 64), (5, 3, 16), (21, 3, 100), (9, 2, 128), (70, 37, 70)])
def test_full_gmm_float32_is_within_1e_5_of_float64(backend, n, k, d, generator):
    means, prec, log_w = full_gmm(k, d, generator)
    x = means[torch.randint(k, (n,), generator=generator)] + torch.randn(n, d, generator=generator, dtype=torch.float64)
    inputs = [t.float() for t in (x, means, prec, log_w)]
    got = backend.gmm_log_resp(*inputs, "full", 0.0)
    want = float64_log_resp(*inputs)
    assert_within_1e_5(got[1], want[1])  # the log-likelihood of every point
    # and every entry, log w_k N(x | k), relative to its size
    assert_within_1e_5(got[0].double() + got[1].double()[:, None], want[0] + want[1][:, None])


@pytest.mark.parametrize("d", [16, 64, 128])
def test_full_gmm_float32_on_tight_clusters_is_within_1e_5_of_float64(backend, d):
    # Clusters of std 1e-3 around means in [-1, 1]^d: L_k's entries are about 10^3 and x L_k
    # nearly cancels against mu_k L_k, so every product's error shows. A split whose errors
    # all lean one way (hi truncated, not rounded) misses 1e-5 here. One fixed draw for each d:
    # over random draws the worst point's error spans 0.4 to 0.9 times 1e-5 (CPU and emulated
    # kernels alike), so a fresh draw each run would cross the bound now and then; these sit
    # at 0.37 to 0.63 times it.
    generator = torch.Generator().manual_seed(d)
    k, per = 3, 2 * d
    means = torch.rand(k, d, generator=generator, dtype=torch.float64) * 2 - 1
    x = (means.repeat_interleave(per, 0) + 1e-3 * torch.randn(k * per, d, generator=generator, dtype=torch.float64))
    x = x.float().double()
    cov = torch.stack([torch.cov(x[i * per:(i + 1) * per].T) for i in range(k)]) + 1e-6 * torch.eye(d)
    prec = torch.linalg.cholesky(torch.linalg.inv(cov))
    log_w = torch.full((k,), -math.log(k), dtype=torch.float64)
    inputs = [t.float() for t in (x, means, prec, log_w)]
    assert_within_1e_5(backend.gmm_log_resp(*inputs, "full", 0.0)[1], float64_log_resp(*inputs)[1])


# D = 5, 100: the split-at-use kernel, whose split of an Inf leaves lo = Inf - Inf = NaN and of
# a NaN a NaN lo whatever hi is; 140: the chunked kernel, which rounds both parts.
@pytest.mark.parametrize("d", [5, 100, 140])
def test_non_finite_rows_give_nan_and_nan_centres_are_never_nearest(gpu_kernel, d, generator):
    x = torch.randn(6, d, generator=generator)
    c = torch.randn(4, d, generator=generator)
    x[1, d // 2], x[2, 0] = float("nan"), float("inf")
    for metric in ("sqeuclidean", "dot"):
        out = gpu_kernel.center_distances(x, c, metric)
        assert torch.isnan(out[1:3]).all() and torch.isfinite(out[[0, 3, 4, 5]]).all(), metric
    index, dist = gpu_kernel.nearest_center(x, torch.cat([torch.full((1, d), float("nan")), c]))
    assert index[1:3].tolist() == [-1, -1] and torch.isnan(dist[1:3]).all()
    finite = [0, 3, 4, 5]
    assert torch.equal(index[finite], torch.ops.dsch_ext.nearest_center(x[finite], c)[0] + 1)
