"""The CUDA kernels, run on the CPU under emulation, against the CPU ops.

``torch.ops.dsch_ext_emulated.*`` are the ``csrc/cuda/*.cu`` sources compiled by the host
compiler (``tests/emulation_build.py``): the same kernel bodies and launch arithmetic as on
a GPU, with small device limits (3 SMs, gridDim.y <= 3, small buffers) so that test-sized
inputs take the grid-stride, multi-chunk and ragged-last-chunk paths. Integer results must
equal the CPU op's bit for bit; floating-point results agree within ``TOL`` (the GEMMs and
reductions sum in another order). ``DSCH_EMULATION_LIBRARY`` points these tests at a
sanitizer build (``scripts/test.sh`` runs them under ThreadSanitizer and under
AddressSanitizer + UndefinedBehaviorSanitizer).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import dsch_ext  # noqa: F401  (the CPU ops to compare with)
import emulation_build
import hamming_reference as ref

pytestmark = [pytest.mark.emulation, pytest.mark.slow]  # a minute to build, minutes to run

# Relative tolerance of emulated (GPU) floating-point results against the CPU op.
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


@pytest.fixture(scope="module")
def emu():
    return emulation_build.load_ops()


cpu = torch.ops.dsch_ext


def rng_for(*key):
    return np.random.default_rng([torch.initial_seed() % (2**31), 7, *key])


def assert_close(got, want, dtype):
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])


# ---------------------------------------------------------------- codes and Hamming search


@pytest.mark.parametrize("nbits", [1, 13, 64, 257])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.bool])
def test_pack_unpack(emu, nbits, dtype):
    rng = rng_for(nbits)
    values = torch.from_numpy(rng.standard_normal((37, nbits)))
    codes = values > 0 if dtype == torch.bool else (values * 3).round().to(dtype)
    packed = emu.pack_bits(codes)
    assert torch.equal(packed, cpu.pack_bits(codes))
    assert torch.equal(emu.unpack_bits(packed, nbits), cpu.unpack_bits(packed, nbits))


def test_pack_bits_nan_packs_as_zero(emu):
    codes = torch.ones(3, 9)
    codes[1, 4] = float("nan")
    assert emu.pack_bits(codes)[1].tolist() == [0xEF, 1]  # bit 4 of byte 0 is 0; no host sync to raise


@pytest.mark.parametrize("nbytes", [1, 2, 3, 4, 8, 12, 16, 32, 136])
def test_hamming_distance(emu, nbytes):
    rng = rng_for(nbytes)
    q = torch.from_numpy(ref.random_codes(rng, 11, nbytes))  # 4 query blocks over gridDim.y = 3
    db = torch.from_numpy(ref.random_codes(rng, 301, nbytes))
    assert torch.equal(emu.hamming_distance(q, db), cpu.hamming_distance(q, db))


def test_hamming_distance_grid_stride_over_rows(emu):
    rng = rng_for(0)
    q = torch.from_numpy(ref.random_codes(rng, 2, 8))
    db = torch.from_numpy(ref.random_codes(rng, 64 * 256 + 5, 8))  # more rows than 64 blocks x 256 threads
    assert torch.equal(emu.hamming_distance(q, db), cpu.hamming_distance(q, db))


@pytest.mark.parametrize("nbytes", [2, 4, 5, 8, 16, 32, 136])
@pytest.mark.parametrize("ndb,k", [(1, 1), (7, 7), (101, 1), (101, 13), (101, 101), (250, 37)])
def test_hamming_topk(emu, nbytes, ndb, k):
    rng = rng_for(nbytes, ndb, k)
    q = torch.from_numpy(ref.random_codes(rng, 5, nbytes))  # 5 queries over gridDim.y = 3
    db = torch.from_numpy(ref.random_codes(rng, ndb, nbytes, alphabet=23 if ndb > 50 else None))  # ties
    got, want = emu.hamming_topk(q, db, k), cpu.hamming_topk(q, db, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("k", [1, 60, 600])
def test_hamming_topk_sampled_bound_over_tiles(emu, k):
    # 40 queries (two query tiles), a database far larger than the sample: the bound is
    # sampled, most queries keep it and some (ties, a short candidate list) are redone exactly.
    rng = rng_for(k, 5)
    q = torch.from_numpy(ref.random_codes(rng, 40, 8))
    db = torch.from_numpy(ref.random_codes(rng, 600, 8, alphabet=150))
    got, want = emu.hamming_topk(q, db, k), cpu.hamming_topk(q, db, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("seed", range(4))
def test_hamming_topk_random_shapes(emu, seed):
    # Random sizes, widths and alphabets: both routes (the sampled bound kept, its list
    # overflowing or short of k and redone) and every k, against the CPU op bit for bit.
    rng = rng_for(seed, 11)
    nbytes = int(rng.choice([1, 3, 8, 12, 32]))
    nq, ndb = int(rng.integers(1, 40)), int(rng.integers(1, 500))
    alphabet = int(rng.integers(2, 40)) if rng.random() < 0.5 else None
    q = torch.from_numpy(ref.random_codes(rng, nq, nbytes))
    db = torch.from_numpy(ref.random_codes(rng, ndb, nbytes, alphabet=alphabet))
    for k in sorted({1, int(rng.integers(1, ndb + 1)), ndb}):
        got, want = emu.hamming_topk(q, db, k), cpu.hamming_topk(q, db, k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (nbytes, nq, ndb, k, alphabet)


@pytest.mark.parametrize("nbytes", [32, 64, 128])
def test_hamming_swizzled_stages(emu, nbytes):
    # 256- to 1024-bit codes are staged with each row's words rotated (SwizzledStage): several
    # stages a chunk, ragged last groups, ties, against the CPU ops.
    rng = rng_for(nbytes, 9)
    q = torch.from_numpy(ref.random_codes(rng, 11, nbytes))
    db = torch.from_numpy(ref.random_codes(rng, 777, nbytes, alphabet=300))
    db[:11] = q
    for k in (1, 40, 777):
        got, want = emu.hamming_topk(q, db, k), cpu.hamming_topk(q, db, k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), k
    for radius in (0, nbytes * 4, nbytes * 8):
        got, want = emu.hamming_range(q, db, radius), cpu.hamming_range(q, db, radius)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), radius


def test_hamming_topk_ties_go_to_lower_index(emu):
    rng = rng_for(1)
    db = torch.from_numpy(ref.random_codes(rng, 6, 8)).repeat(40, 1)  # every code 40 times
    q = torch.cat([db[:3], torch.zeros(1, 8, dtype=torch.uint8)])
    for k in (1, 9, 40, 41, 239, 240):
        got, want = emu.hamming_topk(q, db, k), cpu.hamming_topk(q, db, k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_hamming_topk_no_queries(emu):
    dist, idx = emu.hamming_topk(torch.zeros(0, 8, dtype=torch.uint8), torch.zeros(5, 8, dtype=torch.uint8), 3)
    assert dist.shape == (0, 3) and idx.shape == (0, 3)


@pytest.mark.parametrize("nbytes", [2, 4, 5, 8, 16, 32, 136])
@pytest.mark.parametrize("nq,ndb", [(1, 1), (5, 101), (37, 250)])
def test_hamming_range(emu, nbytes, nq, ndb):
    rng = rng_for(nbytes, nq, ndb, 3)
    q = torch.from_numpy(ref.random_codes(rng, nq, nbytes))  # 37 queries: 2-5 query tiles, by width
    db = torch.from_numpy(ref.random_codes(rng, ndb, nbytes, alphabet=23 if ndb > 50 else None))
    db[: min(nq, ndb)] = q[: min(nq, ndb)]  # distance 0 hits
    nbits = 8 * nbytes
    for radius, exclusive in ((0, True), (nbits // 2 - 1, False), (nbits, False)):
        got = emu.hamming_range(q, db, radius, exclusive)
        want = cpu.hamming_range(q, db, radius, exclusive)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), (radius, exclusive)


@pytest.mark.parametrize("nq,radius", [(3, 64), (3, 24), (1, 20), (60, 64)])
def test_hamming_range_segments_and_their_overflow(emu, nq, radius):
    # 2,000 codes in 12 chunks (6 for two query tiles), segments of 35 hits a pair for 3
    # queries, 106 for one, none for 60: at radius 64 every code is a hit and 3 queries' pairs
    # overflow (the second pass writes), at radius 20-24 the hits fit (the segments are
    # copied), and 60 queries' pass only counts.
    rng = rng_for(nq, radius, 4)
    q = torch.from_numpy(ref.random_codes(rng, nq, 8))
    db = torch.from_numpy(ref.random_codes(rng, 2000, 8))
    got, want = emu.hamming_range(q, db, radius), cpu.hamming_range(q, db, radius)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_hamming_range_empty(emu):
    db = torch.zeros(5, 8, dtype=torch.uint8)
    for q, d in ((db[:0], db), (db[:2], db[:0])):
        lims, dist, idx = emu.hamming_range(q, d, 3)
        assert lims.tolist() == [0] * (q.shape[0] + 1) and dist.numel() == 0 and idx.numel() == 0


# ---------------------------------------------------------------- centre distances


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine", "dot"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# 150: column groups. The float32 backward runs on the gradient tile up to D = 128, one pass a side
# for each 64 coordinates: at (200, 130, 64) full and partial tiles of both sides, the centres'
# side over two column groups; D = 65 and 128 take two passes, D = 130 the GEMM route. A zero
# row and a zero centre make cosine's norm clamp.
@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (37, 11, 13), (70, 3, 64), (5, 150, 17), (200, 130, 64), (90, 70, 65),
                                   (40, 150, 128), (20, 9, 130)])
def test_center_distances_forward_backward(emu, metric, dtype, n, k, d, generator):
    x = torch.randn(n, d, generator=generator, dtype=dtype)
    c = torch.randn(k, d, generator=generator, dtype=dtype)
    if n > 1 and k > 1:
        x[1], c[1] = 0.0, 0.0
    out = emu.center_distances(x, c, metric)
    assert_close(out, cpu.center_distances(x, c, metric), dtype)
    grad = torch.randn(n, k, generator=generator, dtype=dtype)
    got = emu._center_distances_backward(grad, x, c, out, metric)
    want = cpu._center_distances_backward(grad, x, c, out, metric)
    # A gradient row is a sum over the other side, in another order on each backend: an entry
    # that cancels errs relative to its row, not to itself (the zero row's cosine gradient, at
    # the 1e8 of the norm clamp, would leave TOL's absolute part nothing to give).
    for got_side, want_side in zip(got, want):
        scale = want_side.abs().amax(dim=1, keepdim=True).clamp(min=1)
        assert_close(got_side / scale, want_side / scale, dtype)


def tf32_round(v):
    """cvt.rna.tf32.f32 on finite float32: to nearest, ties away from zero (13 low bits cleared)."""
    bits = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def tf32_truncate(v):
    """The 13 low mantissa bits cleared: what the tensor cores read of an fp32 operand."""
    bits = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
    return (bits & np.uint32(0xFFFFE000)).view(np.float32)


def tf32x3_dot_model(x, c, chunk=16, split="rounded"):
    """The float32 tile's inner products as the emulated tensor cores form them: operands split
    into TF32 high and residual parts, per k-step of 8 the passes lo*hi, hi*lo, hi*hi, each
    adding its 8 exact products in k order with one fp32 rounding a sum. split="rounded" is
    the split of the staged kernels (both parts rounded to nearest); "at_use" the split-at-use
    kernel's (hi rounded, lo = v - hi whole, of which the tensor cores read the top bits)."""
    d = x.shape[1]
    width = -(-d // chunk) * chunk
    pad = lambda a: np.pad(a.astype(np.float32), ((0, 0), (0, width - d)))  # noqa: E731
    x, c = pad(x), pad(c)
    x_hi, c_hi = tf32_round(x), tf32_round(c)
    if split == "rounded":
        x_lo, c_lo = tf32_round(x - x_hi), tf32_round(c - c_hi)
    else:
        x_lo, c_lo = tf32_truncate(x - x_hi), tf32_truncate(c - c_hi)
    acc = np.zeros((x.shape[0], c.shape[0]), np.float32)
    for k0 in range(0, width, 8):
        for a, b in ((x_lo, c_hi), (x_hi, c_lo), (x_hi, c_hi)):
            for kk in range(k0, k0 + 8):
                acc = acc + np.outer(a[:, kk], b[:, kk])  # exact products, one rounding a sum
    return acc


def fma32(a, b, c):
    """a * b + c in float32 with one rounding (numpy has no fma). a * b is exact in float64
    and s + err (TwoSum) is the exact sum, so rounding s to float32 is right except where s
    lies exactly halfway between two float32s: there err's sign decides."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c = c.astype(np.float64)
    s = p + c
    s_p = s - c
    err = (p - s_p) + (c - (s - s_p))
    r = s.astype(np.float32)
    beyond = np.nextafter(r, np.where(s > r, np.float32(np.inf), np.float32(-np.inf)))
    halfway = (s != r) & (s - r == beyond.astype(np.float64) - s)
    toward_beyond = np.sign(err) == np.sign(beyond.astype(np.float64) - s)
    return np.where(halfway & (err != 0) & toward_beyond, beyond, r)


# d = 13, 17, 40, 64, 70: the split-at-use kernel (padded to 16, 32, 64, 64, 128); 130: the chunked
# one with the staged split. 130 centres: three column tiles over the groups.
@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (37, 11, 13), (19, 70, 17), (70, 130, 40), (65, 9, 64), (66, 67, 70),
                                   (20, 67, 130)])
def test_float32_inner_products_are_3xtf32_bit_for_bit(emu, n, k, d, generator):
    x = torch.randn(n, d, generator=generator)
    c = torch.randn(k, d, generator=generator)
    # Halfway mantissas: 1 + 2^-11 (+ the sign) rounds away from zero to 1 + 2^-10.
    x[0, 0], c[0, 0] = 1 + 2**-11, -(1 + 2**-11)
    got = emu.center_distances(x, c, "dot")
    want = -tf32x3_dot_model(x.numpy(), c.numpy(), split="at_use" if d <= 128 else "rounded")
    assert np.array_equal(got.numpy().view(np.uint32), want.view(np.uint32))
    assert tf32_round(np.float32([1 + 2**-11, -(1 + 2**-11)])).tolist() == [1 + 2**-10, -(1 + 2**-10)]
    # Its accuracy, on this backend and the others: tests/test_tensor_core_accuracy.py.


@pytest.mark.parametrize("split", ["rounded", "at_use"])
def test_3xtf32_products_err_within_2_to_the_minus_21_with_either_split(split):
    # kTf32x3Epsilon's derivation (tf32_math.h): lo = v - hi has at most 12 significant bits, so
    # reading it as TF32, rounded (the staged split) or truncated (the tensor cores reading the
    # split-at-use kernel's whole lo), loses at most its last bit, 2^-23 |v|; a product
    # a_hi b_hi + a_hi b_lo + a_lo b_hi then errs by at most 2^-21 |a b| (to 2^-10).
    rng = rng_for(21)
    size = 200_000
    mantissa = rng.integers(2**23, 2**24, size=size)
    # Low 13 bits at and around the halfway point of hi's rounding, and lo with 12 bits set.
    mantissa[: size // 4] = (mantissa[: size // 4] & ~0x1FFF) | rng.choice([0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x0801],
                                                                            size // 4)
    v = np.ldexp(mantissa.astype(np.float64), rng.integers(-80, 80, size=size) - 23)
    v = (v * rng.choice([-1.0, 1.0], size)).astype(np.float32)
    hi = tf32_round(v)
    lo = v - hi  # exact in float32
    lo_read = tf32_round(lo) if split == "rounded" else tf32_truncate(lo)
    v64, hi64, lo64, read64 = (t.astype(np.float64) for t in (v, hi, lo, lo_read))
    assert np.array_equal(hi64 + lo64, v64)
    assert (np.abs(lo64 - read64) <= 2.0**-23 * np.abs(v64)).all()
    a, b = slice(0, size // 2), slice(size // 2, size)
    approx = hi64[a] * hi64[b] + hi64[a] * read64[b] + read64[a] * hi64[b]  # products exact in float64
    exact = v64[a] * v64[b]
    ratio = np.abs(exact - approx) / np.abs(exact)
    assert ratio.max() <= 2.0**-21 * (1 + 2.0**-10)
    assert ratio.max() > 2.0**-22  # the bound is nearly reached: the cases above exercise it
    # With hi truncated instead, lo keeps up to 13 significant bits and loses more than one.
    lo_of_truncated = (v - tf32_truncate(v)).astype(np.float64)
    assert (np.abs(lo_of_truncated - tf32_truncate(lo_of_truncated.astype(np.float32))) > 2.0**-23 * np.abs(v64)).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,k,d", [(1, 1, 3), (5, 200, 7), (203, 7, 13), (97, 40, 64), (70, 70, 100), (9, 5, 140)])
def test_nearest_center(emu, dtype, n, k, d, generator):
    # k = 200 leaves no room for one row in the 96-element emulated buffer: one row a block.
    # D = 100: the split-at-use kernel at 128 coordinates; 140: the chunked kernel.
    x = torch.randn(n, d, generator=generator, dtype=dtype)
    c = torch.randn(k, d, generator=generator, dtype=dtype)
    got, want = emu.nearest_center(x, c), cpu.nearest_center(x, c)
    assert torch.equal(got[0], want[0])
    assert_close(got[1], want[1], dtype)


def test_nearest_center_equal_centres_tie_to_lower_index(emu, generator):
    c = torch.randn(5, 6, generator=generator).repeat(3, 1)  # centre j equals j + 5 and j + 10
    x = torch.cat([c[:5] + 1e-3 * torch.randn(5, 6, generator=generator), c[:5]])
    got, want = emu.nearest_center(x, c), cpu.nearest_center(x, c)
    assert torch.equal(got[0], want[0]) and (got[0] < 5).all()


def test_nearest_center_ties_across_column_groups(emu, generator):
    # 200 centres are 4 column tiles, split over groups: centre 3 reappears as 150 and 199.
    c = torch.randn(200, 9, generator=generator)
    c[150] = c[3]
    c[199] = c[3]
    x = torch.cat([c[[3, 150, 199]], c[3:4] + 1e-4, torch.randn(4, 9, generator=generator)])
    got, want = emu.nearest_center(x, c), cpu.nearest_center(x, c)
    assert torch.equal(got[0], want[0]) and got[0][:3].tolist() == [3, 3, 3]
    assert torch.equal(got[1][:3], torch.zeros(3))


# ---------------------------------------------------------------- GMM E-step and segment_gram


def gmm_params(cov, k, d, dtype, generator):
    means = torch.randn(k, d, generator=generator, dtype=dtype)
    if cov == "full":
        a = torch.randn(k, d, d, generator=generator, dtype=dtype) * 0.3
        prec = torch.linalg.cholesky(a @ a.transpose(1, 2) + torch.eye(d, dtype=dtype))
    elif cov == "tied":
        a = torch.randn(d, d, generator=generator, dtype=dtype) * 0.3
        prec = torch.linalg.cholesky(a @ a.T + torch.eye(d, dtype=dtype))
    elif cov == "diag":
        prec = torch.rand(k, d, generator=generator, dtype=dtype) + 0.5
    else:
        prec = torch.rand(k, generator=generator, dtype=dtype) + 0.5
    log_w = torch.log_softmax(torch.randn(k, generator=generator, dtype=dtype), 0)
    return means, prec, log_w


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# (29, 37, 40): 37 components are 37 column tiles over column groups ('full' float32 on the
# tensor-core tile, D = 40 padded to 64); (70, 5, 20) two point tiles at D padded to 32; 'full'
# float32 at D = 70 runs the 128-coordinate tensor-core kernel, two column tiles a component, and at
# D = 130 (and in float64) the exact route; 130 components are three column tiles of the pair scan.
@pytest.mark.parametrize("n,k,d,floor", [(1, 1, 1, 0.0), (40, 6, 5, 0.0), (29, 9, 8, 1e-6), (29, 37, 40, 0.0),
                                         (70, 5, 20, 1e-3), (9, 3, 70, 1e-3), (7, 2, 130, 0.0), (6, 130, 3, 0.0)])
def test_gmm_log_resp(emu, cov, dtype, n, k, d, floor, generator):
    means, prec, log_w = gmm_params(cov, k, d, dtype, generator)
    x = means[torch.randint(k, (n,), generator=generator)] + torch.randn(n, d, generator=generator, dtype=dtype)
    got = emu.gmm_log_resp(x, means, prec, log_w, cov, floor)
    want = cpu.gmm_log_resp(x, means, prec, log_w, cov, floor)
    assert torch.equal(torch.isinf(got[0]), torch.isinf(want[0]))
    finite = torch.isfinite(want[0])
    assert_close(got[0][finite], want[0][finite], dtype)
    assert_close(got[1], want[1], dtype)


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_gmm_scaled_difference_rounds_once_as_on_the_gpu(emu, cov):
    # x p - b with x = 100 + j ulps, p = 3, b = 300: the product's low bits are the whole
    # answer. The GPU's FFMA rounds x p - b once; the host compiler the emulation is built
    # with rounds x p first unless the shared math asks for the fused step. With one
    # component the log-likelihood is log_const - y^2 / 2 exactly, so every row shows which.
    x64 = 100.0 + torch.arange(1, 2001, dtype=torch.float64) * 2.0**-17  # exact in float32
    x = x64.float()[:, None]
    means, log_w = torch.tensor([[100.0]]), torch.zeros(1)
    prec = torch.tensor([[3.0]]) if cov == "diag" else torch.tensor([3.0])
    got = emu.gmm_log_resp(x, means, prec, log_w, cov, 0.0)[1]
    log_const = emu.gmm_log_resp(means, means, prec, log_w, cov, 0.0)[1]  # y = 0
    once = (x64 * 3.0 - 300.0).float()  # exact in float64, then one rounding
    twice = x[:, 0] * 3.0 - 300.0
    want = log_const - 0.5 * (once * once)
    assert (log_const - 0.5 * (twice * twice) != want).sum() > 1000  # the two roundings differ here
    assert torch.equal(got, want)


LOG_2PI = float("1.8378770664093454835606594728112")  # gmm_math.h's kLog2Pi, the same double


def full_gmm_log_prob_model(x, means, prec, log_w):
    """log w_k N(x | k) as the float32 'full' E-step's tensor-core kernels form it, bit for bit:
    b_k and the log constants by the torch ops the preparation uses; x L_k in 3xTF32
    (tf32x3_dot_model with the split-at-use kernel's split); per point and component, each
    of 16 lanes sums (x L_k - b_k)^2 over its 4 columns of each 64-column tile with fused
    steps, the lanes' sums are added by a xor butterfly (offsets 8, 4, 2, 1), and
    log_const_k - sq / 2 is the entry."""
    n, d = x.shape
    k = means.shape[0]
    width = 64 if d <= 64 else 128
    prec = prec.contiguous()  # as the preparation reads it (a transposed one takes another GEMM path)
    b = torch.bmm(means.unsqueeze(1), prec).squeeze(1).numpy()
    log_const = torch.log(torch.diagonal(prec, 0, 1, 2)).sum(1).add(log_w).sub(0.5 * d * LOG_2PI).numpy()
    y = np.zeros((n, k, width), np.float32)
    for comp in range(k):
        y[:, comp, :d] = tf32x3_dot_model(x.numpy(), prec[comp].T.numpy(), split="at_use") - b[comp]
    lanes = y.reshape(n, k, width // 64, 16, 4)  # [.., tile, lane, column of the lane]
    sq = np.zeros((n, k, 16), np.float32)
    for tile in range(width // 64):
        for j in range(4):
            sq = fma32(lanes[:, :, tile, :, j], lanes[:, :, tile, :, j], sq)
    for offset in (8, 4, 2, 1):
        sq = sq + sq[:, :, np.arange(16) ^ offset]
    return log_const - np.float32(0.5) * sq[:, :, 0]


# The split-at-use kernel at D = 5, 40, 64 (padded to 16, 64, 64) and at D = 70, 100, 128 (128).
# With one component the log-likelihood is the entry itself; with several, every log
# responsibility is the modelled entry minus the kernel's log-likelihood, in one rounding.
@pytest.mark.parametrize("n,k,d", [(9, 1, 40), (6, 1, 100), (70, 9, 5), (33, 4, 64), (21, 3, 70), (9, 2, 128), (5, 3, 100)])
def test_full_gmm_float32_is_its_3xtf32_model_bit_for_bit(emu, n, k, d, generator):
    means, prec, log_w = gmm_params("full", k, d, torch.float32, generator)
    x = means[torch.randint(k, (n,), generator=generator)] + torch.randn(n, d, generator=generator)
    got = emu.gmm_log_resp(x, means, prec, log_w, "full", 0.0)
    want = full_gmm_log_prob_model(x, means, prec, log_w)
    if k == 1:
        assert np.array_equal(got[1].numpy().view(np.uint32), want[:, 0].view(np.uint32))
    assert np.array_equal(got[0].numpy().view(np.uint32), (want - got[1].numpy()[:, None]).view(np.uint32))
    lse = torch.logsumexp(torch.from_numpy(want).double(), 1)
    assert ((got[1].double() - lse).abs() <= 1e-6 * lse.abs().clamp(min=1)).all()


@pytest.mark.parametrize("sizes", [[0], [5], [0, 3, 0, 40, 1], [1] * 9, [60, 0, 0, 2]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_gram(emu, sizes, dtype, generator):
    # d = 9: 4096-element emulated budget leaves a few chunks; one 40-row segment spans several.
    rows = torch.randn(sum(sizes), 9, generator=generator, dtype=dtype)
    offsets = torch.tensor([0] + np.cumsum(sizes).tolist(), dtype=torch.int64)
    assert_close(emu.segment_gram(rows, offsets), cpu.segment_gram(rows, offsets), dtype)


def test_segment_gram_bad_offsets_stay_in_bounds(emu, generator):
    rows = torch.randn(6, 3, generator=generator)
    for offsets in ([0, 9, 2], [-4, 3, 6], [5, 1, 100]):  # unchecked on a GPU: clamped, never read outside
        out = emu.segment_gram(rows, torch.tensor(offsets))
        assert out.shape == (2, 3, 3)


# ---------------------------------------------------------------- precision switch


def test_results_ignore_the_tf32_switch(emu, generator):
    grad = torch.randn(50, 9, generator=generator)
    results = []
    for d in (16, 80, 140):  # the backward on the gradient tile (one and two passes a side), and by GEMMs
        x, c = torch.randn(50, d, generator=generator), torch.randn(9, d, generator=generator)
        dist = emu.center_distances(x, c, "sqeuclidean")
        results.append(lambda x=x, c=c, dist=dist: (emu.center_distances(x, c, "sqeuclidean"),
                                                    emu.nearest_center(x, c)[0],
                                                    *emu._center_distances_backward(grad, x, c, dist, "sqeuclidean")))
    before = [r() for r in results]
    old = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        after = [r() for r in results]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old[0]
        torch.set_float32_matmul_precision(old[1])
    assert all(torch.equal(a, b) for one, two in zip(before, after) for a, b in zip(one, two))


# ---------------------------------------------------------------- the GPU's launch constants

# One case per CUDA kernel, run in the production emulation build (the GPU's buffer sizes,
# chunks and samples, csrc/cuda/launch_constants.cuh) against the CPU ops.
PRODUCTION_CASES = r"""
import torch, dsch_ext
emu, cpu = torch.ops.dsch_ext_emulated, torch.ops.dsch_ext
g = torch.Generator().manual_seed(0)
codes = torch.randint(0, 2, (300, 70), generator=g)
packed = emu.pack_bits(codes)
assert torch.equal(packed, cpu.pack_bits(codes)) and torch.equal(emu.unpack_bits(packed, 70), cpu.unpack_bits(packed, 70))
q, db = packed[:20], packed[20:]
assert torch.equal(emu.hamming_distance(q, db), cpu.hamming_distance(q, db))
for k in (1, 17, 280):
    for got, want in zip(emu.hamming_topk(q, db, k), cpu.hamming_topk(q, db, k)):
        assert torch.equal(got, want), k
for got, want in zip(emu.hamming_range(q, db, 30), cpu.hamming_range(q, db, 30)):
    assert torch.equal(got, want)
x, c = torch.randn(200, 9, generator=g, dtype=torch.float64), torch.randn(13, 9, generator=g, dtype=torch.float64)
for metric in ("sqeuclidean", "cosine", "dot"):
    out = emu.center_distances(x, c, metric)
    torch.testing.assert_close(out, cpu.center_distances(x, c, metric), rtol=1e-10, atol=1e-10)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for a, b in zip(emu._center_distances_backward(grad, x, c, out, metric),
                    cpu._center_distances_backward(grad, x, c, out, metric)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
for a, b in zip(emu.nearest_center(x, c), cpu.nearest_center(x, c)):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
x32, c32 = x.float(), c.float()  # the float32 backward's gradient tile
out32 = emu.center_distances(x32, c32, "cosine")
grad32 = torch.randn(out32.shape, generator=g)
for a, b in zip(emu._center_distances_backward(grad32, x32, c32, out32, "cosine"),
                cpu._center_distances_backward(grad32, x32, c32, out32, "cosine")):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
chol = {"full": torch.eye(9, dtype=torch.float64).repeat(13, 1, 1) * 2, "tied": torch.eye(9, dtype=torch.float64),
        "diag": torch.ones(13, 9, dtype=torch.float64), "spherical": torch.ones(13, dtype=torch.float64)}
logw = torch.full((13,), -float(torch.log(torch.tensor(13.0))), dtype=torch.float64)
for cov, p in chol.items():
    for a, b in zip(emu.gmm_log_resp(x, c, p, logw, cov, 0.0), cpu.gmm_log_resp(x, c, p, logw, cov, 0.0)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
offsets = torch.tensor([0, 50, 50, 200])
torch.testing.assert_close(emu.segment_gram(x, offsets), cpu.segment_gram(x, offsets), rtol=1e-10, atol=1e-10)
# float32 on the tensor-core tile, its products formed from shuffles here (one kernel variant:
# every variant calls the same product)
x, c = torch.randn(70, 20, generator=g), torch.randn(13, 20, generator=g)
tensor_core = (x, c, emu.center_distances(x, c, "dot"))
torch.testing.assert_close(tensor_core[2], cpu.center_distances(x, c, "dot"), rtol=1e-5, atol=1e-5)
torch.save(tensor_core, "tensor_core.pt")
print("ok")
"""


def test_every_kernel_with_the_gpus_launch_constants(emu, tmp_path):
    if os.environ.get("DSCH_EMULATION_LIBRARY"):
        pytest.skip("a sanitizer run: the production build is tested in the plain run")
    path = emulation_build.build("production")
    code = f"import torch\ntorch.ops.load_library({path!r})\n" + PRODUCTION_CASES
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-4000:]
    # The production build forms the tensor-core product from warp shuffles (a GPU before
    # sm_80), the plain one with the emulator's mma collective: the same bits.
    x, c, distances = torch.load(tmp_path / "tensor_core.pt")
    assert torch.equal(emu.center_distances(x, c, "dot"), distances)


# ---------------------------------------------------------------- the emulator's own checks


def test_selftest_correct_kernel_passes(emu):
    x = torch.arange(100, dtype=torch.float32)
    assert emu._emulation_selftest("ok", x).item() == x.sum().item()


@pytest.mark.parametrize("case,message", [
    ("divergent_syncthreads", "__syncthreads"),
    ("shfl_missing_lane", r"__shfl_xor_sync\(mask 0xffffffff\)"),
    ("shfl_foreign_lane", "mask leaves out"),
    ("mma_missing_lane", r"mma\.sync\.m16n8k8\.tf32\(mask 0xffffffff\)"),
])
def test_emulator_reports_divergence(emu, case, message):
    with pytest.raises(RuntimeError, match=message):
        emu._emulation_selftest(case, torch.ones(64))


SANITIZER_CASES = [
    ("tsan", "missing_syncthreads", "ThreadSanitizer: data race"),
    ("asan", "shared_out_of_bounds", "heap-buffer-overflow"),
    ("asan", "global_out_of_bounds", "heap-buffer-overflow"),
]


@pytest.mark.parametrize("variant,case,report", SANITIZER_CASES)
def test_sanitizers_catch_defects(variant, case, report):
    """A missing barrier and an out-of-bounds index fail the sanitizer builds (CI runs them)."""
    if not os.path.exists(emulation_build.library_path(variant)):
        if os.environ.get("DSCH_REQUIRE_SANITIZERS"):
            pytest.fail(f"the {variant} emulation library is not built (tests/emulation_build.py --variant {variant})")
        pytest.skip(f"the {variant} emulation library is not built")
    code = ("import torch, os; torch.ops.load_library(os.environ['DSCH_EMULATION_LIBRARY']); "
            f"torch.ops.dsch_ext_emulated._emulation_selftest('{case}', torch.arange(64.0))")
    env = emulation_build.sanitizer_env(variant)
    for ok_case in ("ok",):  # the same kernel without the defect runs clean under the same sanitizer
        clean = subprocess.run([sys.executable, "-c", code.replace(f"'{case}'", f"'{ok_case}'")], env=env,
                               capture_output=True, text=True, timeout=300)
        assert clean.returncode == 0, clean.stderr[-3000:]
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and report in run.stderr, run.stderr[-3000:]
