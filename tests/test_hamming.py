"""pack_bits, unpack_bits, hamming_distance, hamming_topk and hamming_range against numpy
references.

Exact equality everywhere: distances, indices and the tie-break (lower database index).
"""
import numpy as np
import pytest
import torch

import dsch_ext
import hamming_reference as ref

# Every code-length path: fixed widths (16..1024 bits), runtime uint64 / uint32 words, bytes.
CODE_BYTES = [1, 2, 3, 4, 5, 8, 12, 16, 24, 32, 40, 64, 128, 136]


def rng_for(*key):
    return np.random.default_rng([torch.initial_seed() % (2**31), *key])


def as_device(a, device):
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


# With AVX-512 VPOPCNTDQ the widest scan is the AVX-512 one and the AVX2 scan is a separate
# path; without it the widest is AVX2 (or scalar), and "avx2" would rerun "auto".
HAS_AVX512_POPCOUNT = {"avx512f", "avx512_vpopcntdq"} <= set(_cpu_flags())


@pytest.fixture(params=["auto", "avx2", "scalar"])
def cpu_scan(request, monkeypatch):
    """Run a CPU search test with each scan: the widest this CPU has (AVX-512 VPOPCNTDQ or
    AVX2), the AVX2 scan, and the portable scalar scan (the kernel reads
    DSCH_EXT_HAMMING_SCAN on every call; a CPU without AVX2 runs the scalar scan for all).
    A variant that would rerun another one is skipped: all but "auto" on other devices, and
    "avx2" where the CPU has no AVX-512 VPOPCNTDQ."""
    if request.param != "auto":
        device = request.node.callspec.params.get("device", "cpu")
        if device != "cpu":
            pytest.skip("the CPU scan variants apply to CPU tensors")
        if request.param == "avx2" and not HAS_AVX512_POPCOUNT:
            pytest.skip("without AVX-512 VPOPCNTDQ the widest scan is already the AVX2 one")
        monkeypatch.setenv("DSCH_EXT_HAMMING_SCAN", request.param)
    return request.param


def assert_topk_matches(q, db, k, device):
    dist, index = dsch_ext.hamming_topk(as_device(q, device), as_device(db, device), k)
    rdist, rindex = ref.hamming_topk(q, db, k)
    assert dist.dtype == torch.int32 and index.dtype == torch.int64
    assert dist.shape == (q.shape[0], k) and index.shape == (q.shape[0], k)
    np.testing.assert_array_equal(dist.cpu().numpy(), rdist)
    np.testing.assert_array_equal(index.cpu().numpy(), rindex)


# ---------------------------------------------------------------- pack / unpack


@pytest.mark.parametrize("nbits", [1, 7, 8, 13, 16, 64, 100, 257])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int64, torch.bool]
)
def test_pack_bits_matches_reference(nbits, dtype, device):
    rng = rng_for(nbits)
    values = rng.standard_normal((29, nbits))
    values[rng.random(values.shape) < 0.1] = 0.0  # zero is the bit 0
    if dtype == torch.bool:
        codes = torch.from_numpy(values > 0)
    elif dtype.is_floating_point:
        codes = torch.from_numpy(values).to(dtype)
    else:
        codes = torch.from_numpy(np.round(values * 3)).to(dtype)
    packed = dsch_ext.pack_bits(codes.to(device))
    assert packed.dtype == torch.uint8 and packed.shape == (29, (nbits + 7) // 8)
    np.testing.assert_array_equal(packed.cpu().numpy(), ref.pack_bits(codes.double().numpy()))
    unpacked = dsch_ext.unpack_bits(packed, nbits)
    assert unpacked.dtype == torch.float32 and unpacked.shape == (29, nbits)
    np.testing.assert_array_equal(unpacked.cpu().numpy(), ref.unpack_bits(packed.cpu().numpy(), nbits))
    sign = torch.where(codes.double() > 0, 1.0, -1.0).float()
    np.testing.assert_array_equal(unpacked.cpu().numpy(), sign.numpy())


def test_pack_bits_non_contiguous_and_empty(device):
    codes = torch.randn(40, 24, device=device)
    view = codes[:, ::2]  # [40, 12], non-contiguous
    assert not view.is_contiguous()
    np.testing.assert_array_equal(
        dsch_ext.pack_bits(view).cpu().numpy(), ref.pack_bits(view.cpu().numpy())
    )
    assert dsch_ext.pack_bits(codes[:0]).shape == (0, 3)  # zero rows: an empty result
    assert dsch_ext.unpack_bits(torch.zeros(0, 3, dtype=torch.uint8, device=device), 24).shape == (0, 24)


def test_pack_bits_accepts_numpy():
    codes = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_array_equal(dsch_ext.pack_bits(codes).numpy(), ref.pack_bits(codes))


def test_pack_bits_bad_input(device):
    with pytest.raises(RuntimeError, match=r"codes must be 2-D.*\[4\]"):
        dsch_ext.pack_bits(torch.randn(4, device=device))
    with pytest.raises(RuntimeError, match=r"zero bits.*\[3, 0\]"):
        dsch_ext.pack_bits(torch.randn(3, 0, device=device))
    bad = torch.randn(3, 9, device=device).abs()
    bad[1, 4] = float("nan")
    if device == "cuda":  # no host sync on CUDA: NaN packs as the bit 0
        assert dsch_ext.pack_bits(bad)[1].tolist() == [0xEF, 1]
    else:
        with pytest.raises(RuntimeError, match=r"NaN.*\[3, 9\]"):
            dsch_ext.pack_bits(bad)
    with pytest.raises(TypeError, match="codes must be a torch.Tensor"):
        dsch_ext.pack_bits([[1.0, -1.0]])


def test_unpack_bits_bad_input(device):
    packed = torch.zeros(4, 2, dtype=torch.uint8, device=device)
    with pytest.raises(RuntimeError, match=r"nbits = 17 does not fit packed of shape \[4, 2\]"):
        dsch_ext.unpack_bits(packed, 17)
    with pytest.raises(RuntimeError, match=r"nbits = 8 does not fit"):
        dsch_ext.unpack_bits(packed, 8)
    with pytest.raises(RuntimeError, match=r"packed must be packed codes of dtype uint8.*Float"):
        dsch_ext.unpack_bits(packed.float(), 16)


def test_pack_bits_is_faiss_layout():
    faiss = pytest.importorskip("faiss")
    rng = rng_for(99)
    codes = rng.standard_normal((50, 64)).astype(np.float32)
    packed = dsch_ext.pack_bits(torch.from_numpy(codes)).numpy()
    index = faiss.IndexBinaryFlat(64)
    index.add(packed)
    dist, _ = index.search(packed[:5], 50)
    ours = dsch_ext.hamming_distance(torch.from_numpy(packed[:5]), torch.from_numpy(packed)).numpy()
    np.testing.assert_array_equal(np.sort(ours, axis=1), dist)
    # Bit i of byte j is dimension 8j+i: setting dimension 9 alone gives byte 1 == 2.
    one = -np.ones((1, 64), dtype=np.float32)
    one[0, 9] = 1
    assert dsch_ext.pack_bits(torch.from_numpy(one)).numpy()[0].tolist() == [0, 2, 0, 0, 0, 0, 0, 0]


# ---------------------------------------------------------------- hamming_distance


@pytest.mark.parametrize("nbytes", CODE_BYTES)
def test_hamming_distance_matches_reference(nbytes, device):
    rng = rng_for(nbytes)
    q = ref.random_codes(rng, 17, nbytes)
    db = ref.random_codes(rng, 1031, nbytes)
    out = dsch_ext.hamming_distance(as_device(q, device), as_device(db, device))
    assert out.dtype == torch.int32 and out.shape == (17, 1031)
    np.testing.assert_array_equal(out.cpu().numpy(), ref.hamming_distance(q, db))


def test_hamming_distance_extremes(device):
    zeros = torch.zeros(3, 8, dtype=torch.uint8, device=device)
    ones = torch.full((2, 8), 255, dtype=torch.uint8, device=device)
    np.testing.assert_array_equal(dsch_ext.hamming_distance(zeros, ones).cpu().numpy(), np.full((3, 2), 64))
    np.testing.assert_array_equal(dsch_ext.hamming_distance(ones, ones).cpu().numpy(), np.zeros((2, 2)))


# ---------------------------------------------------------------- hamming_topk


@pytest.mark.parametrize("nbytes", CODE_BYTES)
def test_topk_every_code_length(nbytes, device, cpu_scan):
    rng = rng_for(nbytes, 1)
    q = ref.random_codes(rng, 21, nbytes)
    db = ref.random_codes(rng, 2003, nbytes)
    for k in (1, 10, 333):
        assert_topk_matches(q, db, k, device)


@pytest.mark.parametrize("nq,ndb,k", [(1, 1, 1), (3, 7, 7), (9, 500, 500), (13, 4099, 1), (5, 4099, 4099)])
def test_topk_k_equals_ndb_and_small_sizes(nq, ndb, k, device, cpu_scan):
    rng = rng_for(nq, ndb, k)
    assert_topk_matches(ref.random_codes(rng, nq, 8), ref.random_codes(rng, ndb, 8), k, device)


@pytest.mark.parametrize("alphabet", [1, 2, 5, 40])
def test_topk_ties_go_to_lower_index(alphabet, device, cpu_scan):
    # Few distinct codes: every distance is tied many times over.
    rng = rng_for(alphabet, 2)
    db = ref.random_codes(rng, 3001, 4, alphabet=alphabet)
    q = np.concatenate([db[:4], ref.random_codes(rng, 5, 4)])
    for k in (1, 2, 17, 1000, 3001):
        assert_topk_matches(q, db, k, device)


@pytest.mark.parametrize("nq", [1, 2, 3])
def test_topk_few_queries_split_database(nq, device, cpu_scan):
    # Few queries make the CPU kernel split the database across threads and
    # the CUDA kernel across blocks: the merge must keep the exact answer.
    rng = rng_for(nq, 3)
    db = ref.random_codes(rng, 70001, 8, alphabet=3000)
    q = ref.random_codes(rng, nq, 8)
    for k in (1, 100, 5000):
        assert_topk_matches(q, db, k, device)


def test_topk_large_k_many_queries(device, cpu_scan):
    rng = rng_for(4)
    assert_topk_matches(ref.random_codes(rng, 40, 16), ref.random_codes(rng, 20011, 16), 5000, device)


@pytest.mark.parametrize("nbytes", [8, 32, 5])
@pytest.mark.parametrize("case", ["random", "sample-misleads", "sample-exact"])
def test_topk_sampled_bound(case, nbytes, device, cpu_scan):
    # With k large next to the database the CPU scan starts from a bound read off a strided
    # sample of the codes. It must stay exact when the sample is typical, when the sampled
    # codes are all the close codes there are (fewer than k: that query is scanned again
    # without the bound), and when the sampled codes are the query itself. 64 queries on 2
    # threads keep the database in one piece, so the planted codes are the sampled ones.
    rng = rng_for(nbytes, len(case))
    ndb, k = 200_003, 5000
    db = ref.random_codes(rng, ndb, nbytes)
    q = ref.random_codes(rng, 64, nbytes)
    stride = ndb // ((16 * ndb + k - 1) // k)  # the kernel's sample stride (16 codes per kept one)
    if case == "sample-misleads":
        db[::stride] = q[0]  # 642 codes at distance 0 from query 0, every one of them sampled
    elif case == "sample-exact":
        db[::stride] = q[1]
        k = 500
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert_topk_matches(q, db, k, device)
    finally:
        torch.set_num_threads(threads)


def test_topk_same_answer_for_any_thread_count():
    rng = rng_for(5)
    q = torch.from_numpy(ref.random_codes(rng, 7, 8))
    db = torch.from_numpy(ref.random_codes(rng, 50000, 8, alphabet=500))
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(dsch_ext.hamming_topk(q, db, 777))
    finally:
        torch.set_num_threads(before)
    for dist, index in results[1:]:
        assert torch.equal(dist, results[0][0]) and torch.equal(index, results[0][1])


def test_topk_non_contiguous_and_misaligned(device):
    rng = rng_for(6)
    wide = as_device(ref.random_codes(rng, 1001, 24), device)
    db = wide[:, 8:16]  # non-contiguous rows of 8 bytes
    q = wide[1:6, :8].contiguous()[1:]  # contiguous but not 16-byte aligned
    assert not db.is_contiguous()
    assert q.data_ptr() % 16 != 0
    assert_topk_matches(q.cpu().numpy(), db.cpu().numpy(), 50, device)
    dist, index = dsch_ext.hamming_topk(q, db, 50)
    rdist, rindex = ref.hamming_topk(q.cpu().numpy(), db.cpu().numpy(), 50)
    np.testing.assert_array_equal(index.cpu().numpy(), rindex)
    np.testing.assert_array_equal(
        dsch_ext.hamming_distance(q, db).cpu().numpy(), ref.hamming_distance(q.cpu().numpy(), db.cpu().numpy())
    )


def test_topk_zero_queries(device):
    db = torch.zeros(10, 8, dtype=torch.uint8, device=device)
    dist, index = dsch_ext.hamming_topk(db[:0], db, 3)
    assert dist.shape == (0, 3) and index.shape == (0, 3)


def test_topk_is_deterministic(device):
    rng = rng_for(7)
    q = as_device(ref.random_codes(rng, 33, 8), device)
    db = as_device(ref.random_codes(rng, 30000, 8, alphabet=100), device)
    first = dsch_ext.hamming_topk(q, db, 1234)
    for _ in range(3):
        again = dsch_ext.hamming_topk(q, db, 1234)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.parametrize("op", ["distance", "topk"])
def test_hamming_bad_input(op, device):
    def call(q, db, k=1):
        return dsch_ext.hamming_distance(q, db) if op == "distance" else dsch_ext.hamming_topk(q, db, k)

    db = torch.zeros(10, 8, dtype=torch.uint8, device=device)
    with pytest.raises(RuntimeError, match=r"queries must be packed codes of dtype uint8.*Float.*\[2, 8\]"):
        call(torch.zeros(2, 8, device=device), db)
    with pytest.raises(RuntimeError, match=r"database must be 2-D.*\[80\]"):
        call(db[:2], db.flatten())
    with pytest.raises(RuntimeError, match=r"different code widths.*\[2, 4\].*32 bits.*\[10, 8\].*64 bits"):
        call(db[:2, :4], db)
    with pytest.raises(RuntimeError, match=r"database is empty.*\[0, 8\]"):
        call(db[:2], db[:0])
    with pytest.raises(RuntimeError, match=r"queries has zero code bytes.*\[2, 0\]"):
        call(db[:2, :0], db[:, :0])
    if op == "topk":
        for k in (0, -3, 11):
            with pytest.raises(RuntimeError, match=rf"k must be in \[1, ndb\] = \[1, 10\].*got k = {k}"):
                call(db[:2], db, k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hamming_mixed_devices():
    db = torch.zeros(10, 8, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="same device"):
        dsch_ext.hamming_topk(db[:2].cuda(), db, 1)
    with pytest.raises(RuntimeError, match="same device"):
        dsch_ext.hamming_distance(db[:2], db.cuda())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("nbytes", [2, 8, 32, 40])
def test_cuda_equals_cpu_on_large_search(nbytes):
    rng = rng_for(nbytes, 8)
    q = torch.from_numpy(ref.random_codes(rng, 257, nbytes))
    db = torch.from_numpy(ref.random_codes(rng, 200003, nbytes, alphabet=20000))
    for k in (1, 1000, 5000):
        cpu = dsch_ext.hamming_topk(q, db, k)
        gpu = dsch_ext.hamming_topk(q.cuda(), db.cuda(), k)
        assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())


# ---------------------------------------------------------------- hamming_range


def assert_range_matches(q, db, radius, device, exclusive=False):
    lims, dist, index = dsch_ext.hamming_range(as_device(q, device), as_device(db, device), radius, exclusive)
    rlims, rdist, rindex = ref.hamming_range(q, db, radius, exclusive)
    assert lims.dtype == torch.int64 and dist.dtype == torch.int32 and index.dtype == torch.int64
    assert lims.device.type == dist.device.type == index.device.type == torch.device(device).type
    np.testing.assert_array_equal(lims.cpu().numpy(), rlims)
    np.testing.assert_array_equal(dist.cpu().numpy(), rdist)
    np.testing.assert_array_equal(index.cpu().numpy(), rindex)


@pytest.mark.parametrize("nbytes", CODE_BYTES)
def test_range_every_code_length(nbytes, device, cpu_scan):
    rng = rng_for(nbytes, 21)
    q = ref.random_codes(rng, 9, nbytes)
    db = ref.random_codes(rng, 1201, nbytes, alphabet=300)
    db[:5] = q[:5]  # exact matches at distance 0
    nbits = nbytes * 8
    for radius in (0, 1, nbits // 2 - 2, nbits // 2, nbits, nbits + 5):
        assert_range_matches(q, db, radius, device)
        assert_range_matches(q, db, radius, device, exclusive=True)


@pytest.mark.parametrize("nq", [1, 3, 40])
def test_range_few_queries_split_database(nq, device, cpu_scan):
    rng = rng_for(nq, 22)
    db = ref.random_codes(rng, 70001, 8, alphabet=5000)
    q = db[rng.integers(0, db.shape[0], nq)]
    assert_range_matches(q, db, 22, device)


def test_scan_choice_is_checked():
    db = torch.zeros(10, 8, dtype=torch.uint8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSCH_EXT_HAMMING_SCAN", "sse9")
        with pytest.raises(RuntimeError, match="DSCH_EXT_HAMMING_SCAN must be avx512, avx2 or scalar, got 'sse9'"):
            dsch_ext.hamming_topk(db, db, 3)


def test_range_edges(device):
    rng = rng_for(23)
    db = ref.random_codes(rng, 50, 4)
    assert_range_matches(db[:0], db, 3, device)  # no queries
    assert_range_matches(db[:4], db[:0], 3, device)  # empty database: every list is empty
    assert_range_matches(db[:1], db[:1], 0, device)  # one point, itself
    lims, dist, index = dsch_ext.hamming_range(as_device(db[:3], device), as_device(db, device), 0, exclusive=True)
    assert lims.tolist() == [0, 0, 0, 0] and dist.numel() == 0 and index.numel() == 0
    dup = np.repeat(db[:2], 30, axis=0)  # duplicates come in index order
    assert_range_matches(dup[:3], dup, 0, device)


def test_range_same_answer_for_any_thread_count():
    rng = rng_for(24)
    q = torch.from_numpy(ref.random_codes(rng, 37, 16))
    db = torch.from_numpy(ref.random_codes(rng, 40000, 16, alphabet=900))
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(dsch_ext.hamming_range(q, db, 50))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("nbytes", [8192, 8200])
def test_range_distances_past_16_bits(nbytes):
    # Codes of 65,536 bits and more (the CPU takes any width): a distance of 65,536 and the
    # index beside it both come back whole.
    q = np.zeros((1, nbytes), np.uint8)
    db = np.zeros((3, nbytes), np.uint8)
    db[0] = 0xFF
    db[2, :5] = 0x01
    lims, d, i = dsch_ext.hamming_range(q, db, 8 * nbytes)
    assert lims.tolist() == [0, 3]
    assert d.tolist() == [8 * nbytes, 0, 5] and i.tolist() == [0, 1, 2]
    index = dsch_ext.BinaryIndex(8 * nbytes)
    index.add(db)
    lims, d, i = index.range_search(q, 8 * nbytes)
    assert d.tolist() == [8 * nbytes, 0, 5] and i.tolist() == [0, 1, 2]


def test_range_bad_input(device):
    db = torch.zeros(10, 8, dtype=torch.uint8, device=device)
    with pytest.raises(RuntimeError, match=r"queries must be packed codes of dtype uint8.*Float.*\[2, 8\]"):
        dsch_ext.hamming_range(torch.zeros(2, 8, device=device), db, 1)
    with pytest.raises(RuntimeError, match=r"different code widths.*\[2, 4\]"):
        dsch_ext.hamming_range(db[:2, :4], db, 1)
    with pytest.raises(RuntimeError, match=r"radius must be >= 0, got radius = -1"):
        torch.ops.dsch_ext.hamming_range(db[:2], db, -1)
    with pytest.raises(ValueError, match=r"radius must be an int.*2.5"):
        dsch_ext.hamming_range(db[:2], db, 2.5)
    with pytest.raises(ValueError, match=r"exclusive must be a bool"):
        dsch_ext.hamming_range(db[:2], db, 2, exclusive="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("nbytes", [2, 8, 32, 40])
def test_cuda_range_equals_cpu_on_large_search(nbytes):
    rng = rng_for(nbytes, 25)
    q = torch.from_numpy(ref.random_codes(rng, 257, nbytes))
    db = torch.from_numpy(ref.random_codes(rng, 200003, nbytes, alphabet=20000))
    for radius in (0, nbytes * 2, nbytes * 3):
        cpu = dsch_ext.hamming_range(q, db, radius)
        gpu = dsch_ext.hamming_range(q.cuda(), db.cuda(), radius)
        assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))


# ---------------------------------------------------------------- torch.library integration


def sample_inputs(device):
    rng = rng_for(11)
    q = as_device(ref.random_codes(rng, 6, 8), device)
    db = as_device(ref.random_codes(rng, 300, 8), device)
    codes = torch.randn(6, 21, device=device)
    return [
        ("pack_bits", (codes,)),
        ("unpack_bits", (q, 64)),
        ("hamming_distance", (q, db)),
        ("hamming_topk", (q, db, 25)),
        ("hamming_range", (q, db, 27)),
    ]


def test_opcheck(device):
    for name, args in sample_inputs(device):
        torch.library.opcheck(getattr(torch.ops.dsch_ext, name).default, args)


def test_torch_compile_fullgraph(device):
    def search(codes, database, k: int):
        packed = dsch_ext.pack_bits(codes)
        dist, index = dsch_ext.hamming_topk(packed, database, k)
        return dist.float().mean(dim=1), index

    rng = rng_for(12)
    db = as_device(ref.random_codes(rng, 500, 4), device)
    codes = torch.randn(9, 32, device=device)
    compiled = torch.compile(search, fullgraph=True, backend="aot_eager")
    got = compiled(codes, db, 40)
    want = search(codes, db, 40)
    assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0])


def test_meta_shapes():
    q = torch.empty(7, 8, dtype=torch.uint8, device="meta")
    db = torch.empty(100, 8, dtype=torch.uint8, device="meta")
    dist, index = torch.ops.dsch_ext.hamming_topk(q, db, 30)
    assert dist.shape == (7, 30) and dist.dtype == torch.int32 and index.dtype == torch.int64
    assert torch.ops.dsch_ext.hamming_distance(q, db).shape == (7, 100)
    assert torch.ops.dsch_ext.pack_bits(torch.empty(3, 13, device="meta")).shape == (3, 2)
