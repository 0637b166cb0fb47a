"""dsch_ext.faiss_compat against faiss-cpu itself: the same answers, dtypes, padding, radius
convention, selectors, errors and index files, written either way."""
import io
import os
import warnings

import numpy as np
import pytest
import torch

import dsch_ext
import dsch_ext.faiss_compat as fc

faiss = pytest.importorskip("faiss")


def codes(rng, n, d, distinct=None):
    """n random codes of d bits; with `distinct`, drawn from that many (duplicates, ties)."""
    if distinct is None:
        return rng.integers(0, 256, (n, d // 8), dtype=np.uint8)
    pool = rng.integers(0, 256, (distinct, d // 8), dtype=np.uint8)
    return pool[rng.integers(0, distinct, n)]


def pair(kind, d, device="cpu"):
    """(ours, faiss's) empty index of `kind`."""
    if kind == "flat":
        return fc.IndexBinaryFlat(d, device=device), faiss.IndexBinaryFlat(d)
    ours = getattr(fc, kind)(fc.IndexBinaryFlat(d, device=device))
    return ours, getattr(faiss, kind)(faiss.IndexBinaryFlat(d))


def fill(index, x, ids):
    if ids is None:
        index.add(x)
    else:
        index.add_with_ids(x, ids)


def assert_same(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, y.dtype, x.shape, y.shape)
        np.testing.assert_array_equal(x, y)


KINDS = ["flat", "IndexBinaryIDMap", "IndexBinaryIDMap2"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d,nb,distinct", [(8, 300, None), (24, 57, 5), (64, 1000, 40), (256, 123, None),
                                           (1024, 40, 3)])
def test_search_and_range_equal_faiss(kind, d, nb, distinct, device):
    rng = np.random.default_rng(d + nb)
    xb, xq = codes(rng, nb, d, distinct), codes(rng, 17, d, distinct)
    ids = None if kind == "flat" else rng.permutation(np.arange(-50, 10 * nb))[:nb]  # negative ids too
    ours, theirs = pair(kind, d, device)
    fill(ours, xb, ids)
    fill(theirs, xb, ids)
    assert (ours.ntotal, ours.d, ours.code_size, ours.is_trained, ours.metric_type) == \
        (theirs.ntotal, theirs.d, theirs.code_size, theirs.is_trained, theirs.metric_type)
    for k in (1, 7, nb, nb + 5):  # k past ntotal pads with -1 and INT_MAX
        assert_same(ours.search(xq, k), theirs.search(xq, k))
    assert_same([ours.assign(xq, 3)], [theirs.assign(xq, 3)])
    for radius in (0, 1, d // 4, d // 2, d + 1):  # exclusive: distance < radius
        assert_same(ours.range_search(xq, radius), theirs.range_search(xq, radius))


def test_duplicate_ids_like_faiss():
    # faiss's ID maps take any int64 ids, repeated ones too; search reports each code's id.
    rng = np.random.default_rng(3)
    xb = codes(rng, 50, 32, 6)
    ids = rng.integers(-3, 4, 50)
    for kind in ("IndexBinaryIDMap", "IndexBinaryIDMap2"):
        ours, theirs = pair(kind, 32)
        fill(ours, xb, ids)
        fill(theirs, xb, ids)
        assert_same(ours.search(xb[:9], 60), theirs.search(xb[:9], 60))
        assert ours.remove_ids(np.array([0, 2])) == theirs.remove_ids(np.array([0, 2]))
        assert_same(ours.search(xb[:9], 60), theirs.search(xb[:9], 60))
        np.testing.assert_array_equal(fc.vector_to_array(ours.id_map), faiss.vector_to_array(theirs.id_map))


def selectors(lib, n):
    return [
        lib.IDSelectorRange(3, n - 4), lib.IDSelectorRange(n + 10, n + 20), lib.IDSelectorBatch(np.arange(0, n, 3)),
        lib.IDSelectorArray(np.array([n - 1, 1, 5])),
        lib.IDSelectorBitmap(np.packbits(np.arange(n + 3) % 5 == 1, bitorder="little")),
        lib.IDSelectorNot(lib.IDSelectorRange(2, n // 2)),
        lib.IDSelectorAnd(lib.IDSelectorRange(0, n // 2), lib.IDSelectorBatch(np.arange(0, n, 2))),
        lib.IDSelectorOr(lib.IDSelectorRange(0, 3), lib.IDSelectorRange(n - 3, n)),
        lib.IDSelectorXOr(lib.IDSelectorRange(0, n // 2), lib.IDSelectorRange(n // 4, n)), lib.IDSelectorAll(),
    ]


@pytest.mark.parametrize("kind", ["flat", "IndexBinaryIDMap"])
def test_selectors_equal_faiss(kind, device):
    rng = np.random.default_rng(11)
    n, d = 90, 64
    xb, xq = codes(rng, n, d, 30), codes(rng, 6, d, 30)
    ids = None if kind == "flat" else np.arange(n)[::-1].copy()  # the selectors see the user's ids
    for ours_sel, their_sel in zip(selectors(fc, n), selectors(faiss, n)):
        ours, theirs = pair(kind, d, device)
        fill(ours, xb, ids)
        fill(theirs, xb, ids)
        p, fp = fc.SearchParameters(sel=ours_sel), faiss.SearchParameters(sel=their_sel)
        assert_same(ours.search(xq, 12, params=p), theirs.search(xq, 12, params=fp))
        assert_same(ours.range_search(xq, 30, params=p), theirs.range_search(xq, 30, params=fp))
        assert ours.remove_ids(ours_sel) == theirs.remove_ids(their_sel)
        assert ours.ntotal == theirs.ntotal
        assert_same(ours.search(xq, n), theirs.search(xq, n))  # flat: positions renumbered after removal
        assert ours_sel.is_member(1) == their_sel.is_member(1)


def test_empty_index_and_no_queries():
    ours, theirs = pair("flat", 32)
    xq = np.zeros((3, 4), np.uint8)
    assert_same(ours.search(xq, 10), theirs.search(xq, 10))
    assert_same(ours.range_search(xq, 5), theirs.range_search(xq, 5))
    fill(ours, xq, None)
    fill(theirs, xq, None)
    none = np.zeros((0, 4), np.uint8)
    assert_same(ours.search(none, 2), theirs.search(none, 2))
    ours.reset()
    assert ours.ntotal == 0 and np.all(ours.search(xq, 1)[1] == -1)


def test_reconstruct_like_faiss():
    rng = np.random.default_rng(5)
    xb = codes(rng, 20, 64)
    flat, fflat = pair("flat", 64)
    fill(flat, xb, None)
    fill(fflat, xb, None)
    np.testing.assert_array_equal(flat.reconstruct(12), fflat.reconstruct(12))
    np.testing.assert_array_equal(flat.reconstruct_n(3, 4), fflat.reconstruct_n(3, 4))
    assert flat.reconstruct_n().shape == (20, 8)
    with pytest.raises(RuntimeError, match="key 20 out of range: the index holds 20 codes"):
        flat.reconstruct(20)
    m2, fm2 = pair("IndexBinaryIDMap2", 64)
    ids = np.arange(100, 120)
    fill(m2, xb, ids)
    fill(fm2, xb, ids)
    np.testing.assert_array_equal(m2.reconstruct(107), fm2.reconstruct(107))
    m2.remove_ids(np.array([107]))
    with pytest.raises(RuntimeError, match="key 107 not found"):
        m2.reconstruct(107)
    np.testing.assert_array_equal(m2.reconstruct(119), xb[19])
    m1 = fc.IndexBinaryIDMap(fc.IndexBinaryFlat(64))
    with pytest.raises(RuntimeError, match="reconstruct not implemented for IndexBinaryIDMap"):
        m1.reconstruct(0)


def test_what_faiss_refuses():
    flat = fc.IndexBinaryFlat(32)
    with pytest.raises(RuntimeError, match="add_with_ids not implemented for IndexBinaryFlat"):
        flat.add_with_ids(np.zeros((1, 4), np.uint8), np.array([3]))
    idmap = fc.IndexBinaryIDMap(fc.IndexBinaryFlat(32))
    with pytest.raises(RuntimeError, match="add does not make sense with IndexBinaryIDMap: use add_with_ids"):
        idmap.add(np.zeros((1, 4), np.uint8))
    flat.add(np.zeros((2, 4), np.uint8))
    with pytest.raises(RuntimeError, match=r"index must be empty on input \(it holds 2 codes\)"):
        fc.IndexBinaryIDMap(flat)
    with pytest.raises(TypeError, match="index must be an IndexBinaryFlat"):
        fc.IndexBinaryIDMap(faiss.IndexBinaryFlat(32))


@pytest.mark.parametrize("call,kind,message", [
    (lambda i: i.search(np.zeros((2, 4), np.uint8), 0), AssertionError, r"k must be an int >= 1, got 0"),
    (lambda i: i.search(np.zeros((2, 3), np.uint8), 1), AssertionError,
     r"x must be uint8 \[n, 4\] \(d = 32 bits\), got shape \(2, 3\)"),
    (lambda i: i.add(np.zeros(4, np.uint8)), AssertionError, r"got shape \(4,\)"),
    (lambda i: i.search(np.zeros((2, 4), np.int32), 1), TypeError, r"got dtype int32 with shape \(2, 4\)"),
    (lambda i: i.range_search(np.zeros((2, 4), np.uint8), 2.5), TypeError, r"thresh must be an int"),
    (lambda i: fc.IndexBinaryFlat(30), AssertionError, r"d must be a multiple of 8"),
    (lambda i: fc.IDSelectorBatch(np.array([0.5])), TypeError, r"ids must be a 1-D array of integer ids"),
    (lambda i: i.search(np.zeros((1, 4), np.uint8), 1, params=fc.SearchParameters(sel=3)), TypeError,
     r"sel must be an IDSelector"),
    (lambda i: i.search(np.zeros((1, 4), np.uint8), 1, params=faiss.SearchParameters()), TypeError,
     r"params must be a SearchParameters of dsch_ext.faiss_compat"),
])
def test_bad_arguments_say_what_and_match_faiss_types(call, kind, message):
    index = fc.IndexBinaryFlat(32)
    index.add(np.zeros((3, 4), np.uint8))
    with pytest.raises(kind, match=message) as caught:
        call(index)
    if kind is AssertionError:
        assert isinstance(caught.value, ValueError)  # the project's argument errors are ValueErrors


def test_read_only_codes_without_warning_or_copy():
    rng = np.random.default_rng(2)
    buf = codes(rng, 100, 64).tobytes()
    xb = np.frombuffer(buf, dtype=np.uint8).reshape(100, 8)
    index = fc.IndexBinaryFlat(64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index.add(xb)
        D, I = index.search(xb[:5], 3)
    assert np.all(I[:, 0] == np.arange(5)) and np.all(D[:, 0] == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_files_both_ways(kind, tmp_path):
    # faiss writes, dsch_ext reads; dsch_ext writes, faiss reads; the bytes are faiss's own.
    rng = np.random.default_rng(7)
    xb, xq = codes(rng, 200, 96, 50), codes(rng, 9, 96, 50)
    ids = None if kind == "flat" else rng.integers(-1000, 1000, 200)
    ours, theirs = pair(kind, 96)
    fill(ours, xb, ids)
    fill(theirs, xb, ids)
    faiss_file, our_file = str(tmp_path / "faiss.index"), str(tmp_path / "ours.index")
    faiss.write_index_binary(theirs, faiss_file)
    fc.write_index_binary(ours, our_file)
    assert open(faiss_file, "rb").read() == open(our_file, "rb").read()
    loaded, floaded = fc.read_index_binary(faiss_file), faiss.read_index_binary(our_file)
    assert type(loaded).__name__ == (kind if kind != "flat" else "IndexBinaryFlat")
    assert_same(loaded.search(xq, 15), theirs.search(xq, 15))
    assert_same(floaded.search(xq, 15), ours.search(xq, 15))
    np.testing.assert_array_equal(fc.serialize_index_binary(ours), faiss.serialize_index_binary(theirs))
    again = fc.deserialize_index_binary(faiss.serialize_index_binary(theirs))
    assert_same(again.range_search(xq, 40), theirs.range_search(xq, 40))
    buffer = io.BytesIO()
    fc.write_index_binary(ours, buffer)
    buffer.seek(0)
    assert_same(fc.read_index_binary(buffer).search(xq, 4), ours.search(xq, 4))


def test_bad_files_are_one_clear_error(tmp_path):
    rng = np.random.default_rng(8)
    m = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(32))
    m.add_with_ids(codes(rng, 5, 32), np.arange(5))
    data = faiss.serialize_index_binary(m).tobytes()
    for cut in range(len(data)):  # every truncation
        with pytest.raises(fc.FaissFormatError, match="truncated"):
            fc.deserialize_index_binary(np.frombuffer(data[:cut], np.uint8))
    with pytest.raises(fc.FaissFormatError, match="3 bytes after the index's end"):
        fc.deserialize_index_binary(np.frombuffer(data + b"abc", np.uint8))
    corrupt = bytearray(data)
    corrupt[12:20] = (10**15).to_bytes(8, "little")  # ntotal: far more than the file holds
    with pytest.raises(fc.FaissFormatError):
        fc.deserialize_index_binary(np.frombuffer(bytes(corrupt), np.uint8))
    ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(32), 32, 2)
    ivf.train(codes(rng, 100, 32))
    path = str(tmp_path / "ivf.index")
    faiss.write_index_binary(ivf, path)
    with pytest.raises(fc.FaissFormatError, match="a faiss IndexBinaryIVF .IBwF.: only IndexBinaryFlat"):
        fc.read_index_binary(path)
    path = str(tmp_path / "float.index")
    faiss.write_index(faiss.IndexFlatL2(8), path)
    with pytest.raises(fc.FaissFormatError, match="not a faiss binary flat index"):
        fc.read_index_binary(path)
    with pytest.raises(RuntimeError):  # faiss's own exception type catches it too
        fc.read_index_binary(path)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "kept.index"
    path.write_bytes(b"old")
    with pytest.raises(TypeError, match="index must be an IndexBinaryFlat"):
        fc.write_index_binary(object(), str(path))
    assert path.read_bytes() == b"old"


def test_knn_hamming_and_helpers():
    rng = np.random.default_rng(9)
    xb, xq = codes(rng, 40, 128, 10), codes(rng, 7, 128, 10)
    assert_same(fc.knn_hamming(xq, xb, 50), faiss.knn_hamming(xq, xb, 50))
    assert fc.popcount64(2**64 - 1) == faiss.popcount64(2**64 - 1) == 64
    for spec in ("BFlat", "IDMap,BFlat", "IDMap2,BFlat"):
        ours, theirs = fc.index_binary_factory(64, spec), faiss.index_binary_factory(64, spec)
        assert type(ours).__name__ in type(theirs).__name__ or ours.d == theirs.d == 64
    with pytest.raises(RuntimeError, match="'BIVF10' is not one of"):
        fc.index_binary_factory(64, "BIVF10")


def test_gpu_index_needs_a_gpu_or_matches_the_cpu():
    res = fc.StandardGpuResources()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="GpuIndexBinaryFlat needs a CUDA device"):
            fc.GpuIndexBinaryFlat(res, 64)
        return
    rng = np.random.default_rng(10)
    cpu = fc.IndexBinaryFlat(64)
    cpu.add(codes(rng, 300, 64, 30))
    gpu = fc.index_binary_cpu_to_gpu(res, 0, cpu)
    xq = codes(rng, 8, 64, 30)
    assert_same(gpu.search(xq, 20), cpu.search(xq, 20))
    assert_same(fc.index_binary_gpu_to_cpu(gpu).range_search(xq, 20), cpu.range_search(xq, 20))


def test_pack_bits_nonnegative_is_faiss_binariser_rule():
    # faiss's binarisers (IndexLSH, fvecs2bitvecs) set a bit for x >= 0; the default is x > 0.
    x = torch.tensor([[0.0, -0.0, 1.5, -2.0, 0.0, 3.0, -1e-30, 1e-30, 0.0, -4.0, 0.0]])
    want = np.packbits(x.numpy() >= 0, axis=1, bitorder="little")
    np.testing.assert_array_equal(dsch_ext.pack_bits(x, nonnegative=True).numpy(), want)
    np.testing.assert_array_equal(dsch_ext.pack_bits(x).numpy(), np.packbits(x.numpy() > 0, axis=1, bitorder="little"))
    ints = torch.tensor([[0, -1, 5, -7, 0, 0, 2, -2, 1]], dtype=torch.int8)
    np.testing.assert_array_equal(dsch_ext.pack_bits(ints, nonnegative=True).numpy(),
                                  np.packbits(ints.numpy() >= 0, axis=1, bitorder="little"))
    with pytest.raises(RuntimeError, match="NaN"):
        dsch_ext.pack_bits(torch.tensor([[float("nan"), 1.0]]), nonnegative=True)


def test_faiss_code_runs_with_the_import_swapped(tmp_path):
    # A faiss user's script, word for word, with `import faiss` replaced.
    import dsch_ext.faiss_compat as faiss_like

    rng = np.random.default_rng(12)
    xb, xq = codes(rng, 500, 64, 60), codes(rng, 20, 64, 60)
    for lib in (faiss, faiss_like):
        index = lib.IndexBinaryIDMap2(lib.IndexBinaryFlat(64))
        index.add_with_ids(xb, np.arange(500) * 7)
        D, I = index.search(xq, 5)
        hits = [set(I[i]) for i in range(len(xq))]
        lims, _, RI = index.range_search(xq, int(np.median(D[:, -1])))
        lib.write_index_binary(index, os.fspath(tmp_path / f"{lib.__name__}.index"))
        index.remove_ids(lib.IDSelectorRange(0, 700))
        D2, I2 = index.search(xq, 5)
        if lib is faiss:
            want = (D, hits, lims, RI, D2, I2)
        else:
            got = (D, hits, lims, RI, D2, I2)
    for a, b in zip(want, got):
        if isinstance(a, list):
            assert a == b
        else:
            np.testing.assert_array_equal(a, b)
