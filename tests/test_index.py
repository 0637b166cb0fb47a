"""BinaryIndex: search against brute force, editing, persistence and its failure modes,
concurrent searches, faiss interoperability and the index command line."""
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import dsch_ext
import hamming_reference as ref
from dsch_ext.index._file_format import HEADER_SIZE


def random_index(n=2000, nbits=64, seed=0, device="cpu", alphabet=None):
    rng = np.random.default_rng(seed)
    packed = ref.random_codes(rng, n, (nbits + 7) // 8, alphabet=alphabet)
    if nbits % 8:
        packed[:, -1] &= (1 << (nbits % 8)) - 1
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    index = dsch_ext.BinaryIndex(nbits, device=device)
    index.add(packed, ids)
    return index, packed, ids


def brute_force(packed, ids, queries, k):
    dist, pos = ref.hamming_topk(queries, packed, k)
    return dist, ids[pos]


@pytest.mark.parametrize("nbits", [13, 64, 256])
def test_search_matches_brute_force(nbits, device):
    index, packed, ids = random_index(nbits=nbits, device=device, alphabet=300)
    queries = packed[:50]
    dist, found = index.search(queries, 40)
    want_d, want_i = brute_force(packed, ids, queries, 40)
    np.testing.assert_array_equal(dist.cpu().numpy(), want_d)
    np.testing.assert_array_equal(found.cpu().numpy(), want_i)


def test_add_codes_default_ids_and_remove(device):
    index = dsch_ext.BinaryIndex(32, device=device)
    codes = torch.randn(100, 32)
    assert index.add(codes).cpu().tolist() == list(range(100))
    assert index.add(codes[:10]).cpu().tolist() == list(range(100, 110))
    assert len(index) == 110
    assert index.remove_ids(torch.arange(0, 110, 2)) == 55
    assert len(index) == 55
    dist, found = index.search(codes[1:2], 1)
    assert found.item() == 1 and dist.item() == 0
    with pytest.raises(ValueError, match="already in the index"):
        index.add(codes[:1], ids=np.array([1]))
    with pytest.raises(ValueError, match="duplicates"):
        index.add(codes[:2], ids=np.array([500, 500]))
    with pytest.raises(ValueError, match=r"does not fit a 32-bit index"):
        index.add(torch.randn(3, 31))
    with pytest.raises(ValueError, match=r"k must be an int in \[1, ntotal\] = \[1, 55\]"):
        index.search(codes[:1], 56)


def test_range_search(device):
    index, packed, ids = random_index(n=3000, nbits=16, device=device, alphabet=200)
    queries = packed[:7]
    lims, dist, found = index.range_search(queries, 3)
    full = ref.hamming_distance(queries, packed)
    for q in range(7):
        sel = np.nonzero(full[q] <= 3)[0]
        np.testing.assert_array_equal(found[lims[q] : lims[q + 1]].cpu().numpy(), ids[sel])
        np.testing.assert_array_equal(dist[lims[q] : lims[q + 1]].cpu().numpy(), full[q, sel])


def test_save_load_roundtrip(tmp_path, device):
    index, packed, ids = random_index(n=1234, nbits=100, device=device)
    path = tmp_path / "codes.dbix"
    index.save(path)
    for mmap in (False, True):
        loaded = dsch_ext.BinaryIndex.load(path, mmap=mmap)
        assert len(loaded) == 1234 and loaded.nbits == 100
        np.testing.assert_array_equal(loaded.codes.numpy(), index.codes.cpu().numpy())
        np.testing.assert_array_equal(loaded.ids.numpy(), ids)
        d1, i1 = loaded.search(packed[:9], 20)
        d2, i2 = index.search(packed[:9], 20)
        assert torch.equal(d1, d2.cpu()) and torch.equal(i1, i2.cpu())
    empty = dsch_ext.BinaryIndex(8)
    empty.save(tmp_path / "empty.dbix")
    assert len(dsch_ext.BinaryIndex.load(tmp_path / "empty.dbix")) == 0


def test_load_rejects_bad_files_with_clear_errors(tmp_path):
    index, _, _ = random_index(n=500, nbits=64)
    good = tmp_path / "good.dbix"
    index.save(good)
    data = good.read_bytes()

    def load_bytes(blob, name):
        p = tmp_path / name
        p.write_bytes(blob)
        return dsch_ext.BinaryIndex.load(p)

    with pytest.raises(dsch_ext.IndexFormatError, match="truncated: .* expected"):
        load_bytes(data[:-3], "truncated.dbix")
    with pytest.raises(dsch_ext.IndexFormatError, match="header alone needs 64"):
        load_bytes(data[:40], "short.dbix")
    flipped = bytearray(data)
    flipped[HEADER_SIZE + 100] ^= 0x10
    with pytest.raises(dsch_ext.IndexFormatError, match="corrupted codes"):
        load_bytes(bytes(flipped), "flipped_code.dbix")
    flipped = bytearray(data)
    flipped[-5] ^= 0x01
    with pytest.raises(dsch_ext.IndexFormatError, match="corrupted ids"):
        load_bytes(bytes(flipped), "flipped_id.dbix")
    flipped = bytearray(data)
    flipped[20] ^= 0x01
    with pytest.raises(dsch_ext.IndexFormatError, match="corrupted header"):
        load_bytes(bytes(flipped), "flipped_header.dbix")
    # Another format version, with a valid header checksum.
    import struct
    import zlib

    other = bytearray(data)
    other[8:12] = struct.pack("<I", 2)
    other[60:64] = struct.pack("<I", zlib.crc32(bytes(other[:60])) & 0xFFFFFFFF)
    with pytest.raises(dsch_ext.IndexFormatError, match="format version 2; this dsch_ext reads version 1"):
        load_bytes(bytes(other), "v2.dbix")
    # Another program's file.
    np.save(tmp_path / "array.npy", np.zeros(10))
    with pytest.raises(dsch_ext.IndexFormatError, match="not a dsch_ext binary index"):
        dsch_ext.BinaryIndex.load(tmp_path / "array.npy")
    with pytest.raises(FileNotFoundError):
        dsch_ext.BinaryIndex.load(tmp_path / "missing.dbix")


def test_load_random_bytes_only_clean_errors(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    good = tmp_path / "good.dbix"
    random_index(n=20, nbits=24)[0].save(good)
    prefix = good.read_bytes()

    @hypothesis.settings(max_examples=300, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(blob=st.one_of(
        st.binary(max_size=300),
        # Valid header start, random rest: exercises the later checks too.
        st.binary(max_size=300).map(lambda b: prefix[:8] + b),
        st.tuples(st.integers(0, len(prefix) - 1), st.integers(0, 255)).map(
            lambda t: prefix[: t[0]] + bytes([t[1]]) + prefix[t[0] + 1 :]),
    ))
    def check(blob):
        path = tmp_path / "fuzz.dbix"
        path.write_bytes(blob)
        try:
            index = dsch_ext.BinaryIndex.load(path)
        except dsch_ext.IndexFormatError:
            return
        # Accepted only if it is exactly the good file (a byte "changed" to itself).
        assert blob == prefix and len(index) == 20

    check()


SAVE_SCRIPT = r"""
import os, signal, sys, resource, torch, dsch_ext
path, mode = sys.argv[1], sys.argv[2]
index = dsch_ext.BinaryIndex(64)
index.add(torch.randint(0, 256, (2_000_000, 8), dtype=torch.uint8))
if mode == "fsize":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
        index.save(path)
    except OSError as exc:
        print("refused:", exc.errno)
        sys.exit(3)
else:
    print("saving", flush=True)
    index.save(path)
"""


def _old_index(tmp_path):
    old, _, old_ids = random_index(n=300, nbits=64, seed=5)
    path = tmp_path / "keep.dbix"
    old.save(path)
    return path, old_ids


def test_save_refused_by_file_size_limit_keeps_previous_file(tmp_path):
    path, old_ids = _old_index(tmp_path)
    result = subprocess.run([sys.executable, "-c", SAVE_SCRIPT, str(path), "fsize"], capture_output=True, text=True,
                            cwd=tmp_path)  # not the repository root: import the installed package
    assert result.returncode == 3, result.stderr
    assert "refused" in result.stdout
    loaded = dsch_ext.BinaryIndex.load(path)
    np.testing.assert_array_equal(loaded.ids.numpy(), old_ids)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # the temporary file was removed


def test_save_killed_mid_write_keeps_previous_file(tmp_path):
    path, old_ids = _old_index(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", SAVE_SCRIPT, str(path), "kill"], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    assert proc.stdout.readline().strip() == "saving"
    # Wait until the temporary file exists and is being written, then kill -9.
    import time

    deadline = time.time() + 60
    while time.time() < deadline:
        tmps = [p for p in os.listdir(tmp_path) if ".tmp-" in p]
        if tmps and os.path.getsize(tmp_path / tmps[0]) > 0:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    loaded = dsch_ext.BinaryIndex.load(path)  # the previous file, intact
    if len(loaded) == 300:
        np.testing.assert_array_equal(loaded.ids.numpy(), old_ids)
    else:  # the save won the race and finished first: then the new file is complete
        assert len(loaded) == 2_000_000


def test_concurrent_searches_match_single_thread():
    index, packed, _ = random_index(n=20000, nbits=64, seed=6, alphabet=2000)
    rng = np.random.default_rng(7)
    queries = [ref.random_codes(rng, 500, 8) for _ in range(8)]
    expected = [index.search(q, 25) for q in queries]
    results = [None] * 8
    errors = []

    def worker(i):
        try:
            for _ in range(3):
                results[i] = index.search(queries[i], 25)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    # Adding while searching is safe: searches see a consistent snapshot.
    index.add(torch.from_numpy(ref.random_codes(rng, 100, 8)))
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        # Codes added concurrently can only be equal-or-better matches with larger ids.
        assert (got[0] <= want[0]).all()


def test_queries_in_chunks_bound_memory():
    index, packed, ids = random_index(n=5000, nbits=32, seed=8)
    index.query_chunk = 64
    queries = packed[:1000]
    dist, found = index.search(queries, 5)
    want_d, want_i = brute_force(packed, ids, queries, 5)
    np.testing.assert_array_equal(dist.numpy(), want_d)
    np.testing.assert_array_equal(found.numpy(), want_i)


def test_faiss_codes_load_unchanged():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(9)
    db = ref.random_codes(rng, 3000, 16)
    fidx = faiss.IndexBinaryFlat(128)
    fidx.add(db)
    codes = faiss.vector_to_array(fidx.xb).reshape(fidx.ntotal, fidx.code_size)
    ours = dsch_ext.BinaryIndex(128)
    ours.add(codes)
    q = ref.random_codes(rng, 20, 16)
    fd, fi = fidx.search(q, 30)
    od, oi = ours.search(q, 30)
    np.testing.assert_array_equal(od.numpy(), fd)
    np.testing.assert_array_equal(oi.numpy(), fi)


def _dsch(cwd, *args):
    # Run from outside the repository so the installed package is imported.
    return subprocess.run([sys.executable, "-m", "dsch_ext", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_index_command_line(tmp_path):
    rng = np.random.default_rng(10)
    codes = rng.standard_normal((400, 48)).astype(np.float32)
    np.save(tmp_path / "codes.npy", codes)
    np.save(tmp_path / "queries.npy", codes[:3])
    built = _dsch(tmp_path, "index", "build", "--codes", tmp_path / "codes.npy", "--out", tmp_path / "idx.dbix")
    assert built.returncode == 0, built.stderr
    found = _dsch(tmp_path, "search", "--index", tmp_path / "idx.dbix", "--queries", tmp_path / "queries.npy", "-k", 4)
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    assert [row[0] for row in result["ids"]] == [0, 1, 2] and [row[0] for row in result["distances"]] == [0, 0, 0]
    csv = _dsch(tmp_path, "search", "--index", tmp_path / "idx.dbix", "--queries", tmp_path / "queries.npy", "-k", 2,
                "--format", "csv")
    assert csv.stdout.splitlines()[0] == "query,rank,id,distance" and len(csv.stdout.splitlines()) == 7
    np.save(tmp_path / "wrong.npy", codes[:3, :40])
    wrong = _dsch(tmp_path, "search", "--index", tmp_path / "idx.dbix", "--queries", tmp_path / "wrong.npy")
    assert wrong.returncode == 2 and "does not fit a 48-bit index" in wrong.stderr
    missing = _dsch(tmp_path, "search", "--index", tmp_path / "nope.dbix", "--queries", tmp_path / "queries.npy")
    assert missing.returncode == 2 and "no index file" in missing.stderr
    missing = _dsch(tmp_path, "index", "build", "--codes", tmp_path / "nope.npy", "--out", tmp_path / "x.dbix")
    assert missing.returncode == 2 and "codes file not found" in missing.stderr


def test_mapped_index_is_copy_on_write(tmp_path):
    """Writing into a memory-mapped index's codes changes that index, never the file, and does
    not crash (a read-only map would end the process with SIGSEGV)."""
    path = tmp_path / "a.dbix"
    index = dsch_ext.BinaryIndex(16)
    index.add(torch.randint(0, 2, (40, 16)))
    index.save(path)
    before = path.read_bytes()
    code = ("import dsch_ext, sys\n"
            f"r = dsch_ext.BinaryIndex.load({str(path)!r}, mmap=True)\n"
            "r.codes[0, 0] = 1 - int(r.codes[0, 0]) % 2\n"
            "print(int(r.codes[0, 0]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert path.read_bytes() == before
    mapped = dsch_ext.BinaryIndex.load(path, mmap=True)
    assert torch.equal(mapped.search(index.codes[:3], 5)[1], index.search(index.codes[:3], 5)[1])


def _rewrite(path, mutate):
    """Load an index file's raw arrays, change them, write them back with valid checksums."""
    index = dsch_ext.BinaryIndex.load(path)
    codes, ids = index.codes.clone(), index.ids.clone()
    mutate(codes, ids)
    forged = dsch_ext.BinaryIndex(index.nbits)
    forged._codes, forged._ids = codes, ids
    forged.save(path)


@pytest.mark.parametrize("defect, message", [
    (lambda codes, ids: codes[:, -1].__ior__(0x80), "bits set past nbits=12"),
    (lambda codes, ids: ids.__setitem__(1, int(ids[0])), "duplicate ids"),
    (lambda codes, ids: ids.__setitem__(2, 2**63 - 1), r"outside \[0, 2\^63 - 2\]|ids are in \[0, 2\^63 - 2\]"),
])
def test_load_refuses_content_no_index_holds(tmp_path, defect, message):
    path = tmp_path / "b.dbix"
    index = dsch_ext.BinaryIndex(12)
    index.add(torch.randint(0, 2, (9, 12)))
    index.save(path)
    _rewrite(path, defect)
    for mmap in (False, True):
        with pytest.raises(dsch_ext.IndexFormatError, match=message):
            dsch_ext.BinaryIndex.load(path, mmap=mmap)


def test_ids_lists_and_bad_ids():
    index = dsch_ext.BinaryIndex(8)
    assert index.add(torch.zeros(2, 8), ids=[5, 9]).tolist() == [5, 9]
    assert index.remove_ids([9]) == 1 and index.ids.tolist() == [5]
    for bad in (np.array([1.7]), [2.0], [True]):
        with pytest.raises(ValueError, match="ids must be integers"):
            index.remove_ids(bad)
    with pytest.raises(ValueError, match="ids must be integers"):
        index.add(torch.zeros(1, 8), ids=[1.5])


@pytest.mark.parametrize("query_chunk", [0, -1, 2.5])
def test_query_chunk_must_be_positive_int(query_chunk):
    with pytest.raises(ValueError, match=f"query_chunk must be a positive int, got {query_chunk}"):
        dsch_ext.BinaryIndex(8, query_chunk=query_chunk)


def test_search_k_and_radius_must_be_ints():
    index = dsch_ext.BinaryIndex(8)
    index.add(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="k must be an int"):
        index.search(torch.zeros(1, 8), 2.7)
    with pytest.raises(ValueError, match="radius must be an int"):
        index.range_search(torch.zeros(1, 8), 1.5)


def test_saved_files_keep_the_mode_or_follow_the_umask(tmp_path):
    index = dsch_ext.BinaryIndex(8)
    index.add(torch.zeros(3, 8))
    old = os.umask(0o022)
    try:
        index.save(tmp_path / "new.dbix")
        assert os.stat(tmp_path / "new.dbix").st_mode & 0o777 == 0o644
        (tmp_path / "kept.dbix").write_bytes(b"")
        os.chmod(tmp_path / "kept.dbix", 0o640)
        index.save(tmp_path / "kept.dbix")
        assert os.stat(tmp_path / "kept.dbix").st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    with pytest.raises(IsADirectoryError):
        index.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        index.save(tmp_path / "missing" / "x.dbix")


# ---------------------------------------------------------------- ids at the edges, memory, messages

def test_ids_outside_int64_or_the_next_id_are_refused_at_add(tmp_path):
    index = dsch_ext.BinaryIndex(8)
    for bad in (np.array([2**63], np.uint64), [2**63 - 1], [-1], np.array([2**64 - 1], np.uint64)):
        with pytest.raises(ValueError, match=r"ids must be in \[0, 2\^63 - 2\]"):
            index.add(torch.zeros(1, 8), ids=bad)
    assert len(index) == 0  # nothing was added
    index.add(torch.zeros(2, 8), ids=np.array([2**63 - 2, 7], np.uint64))
    assert index.ids.tolist() == [2**63 - 2, 7]
    with pytest.raises(ValueError, match="no room for 1 more default ids"):
        index.add(torch.zeros(1, 8))
    index.save(tmp_path / "edge.dbix")
    assert dsch_ext.BinaryIndex.load(tmp_path / "edge.dbix").ids.tolist() == [2**63 - 2, 7]


def test_remove_no_ids_and_search_an_empty_index():
    index = dsch_ext.BinaryIndex(64)
    assert index.remove_ids([]) == 0 and index.remove_ids(np.array([], np.int64)) == 0
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(torch.zeros(1, 64), 10)


def test_read_only_numpy_input_needs_no_copy_and_no_warning(tmp_path):
    import warnings

    codes = np.random.default_rng(0).integers(0, 256, (100, 8), dtype=np.uint8)
    np.save(tmp_path / "db.npy", codes)
    mapped = np.load(tmp_path / "db.npy", mmap_mode="r")
    frozen = np.frombuffer(codes.tobytes(), np.uint8).reshape(100, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "The given NumPy array is not writable"
        for db in (mapped, frozen):
            d, i = dsch_ext.hamming_topk(db[:3], db, 5)
            assert torch.equal(i[:, 0], torch.arange(3))
            lims, _, _ = dsch_ext.hamming_range(db[:3], db, 0)
            assert lims.tolist()[-1] >= 3
            index = dsch_ext.BinaryIndex(64)
            index.add(db)
            assert index.search(db[:2], 1)[1][:, 0].tolist() == [0, 1]


def test_mapped_load_maps_the_ids_too(tmp_path, monkeypatch):
    from dsch_ext.index import _binary_index, _file_format

    index = dsch_ext.BinaryIndex(16)
    index.add(torch.randint(0, 2, (500, 16)))
    index.save(tmp_path / "m.dbix")
    read, original = {}, _file_format.read_index

    def reading(*args, **kwargs):
        read["arrays"] = original(*args, **kwargs)
        return read["arrays"]

    monkeypatch.setattr(_binary_index._file_format, "read_index", reading)
    loaded = dsch_ext.BinaryIndex.load(tmp_path / "m.dbix", mmap=True)
    codes, ids, increasing = read["arrays"].codes, read["arrays"].ids, read["arrays"].increasing
    assert increasing and isinstance(codes, np.memmap) and isinstance(ids.base if ids.base is not None else ids,
                                                                      np.memmap)
    # The index's tensors are those mapped arrays, not copies of them.
    assert loaded.codes.data_ptr() == codes.ctypes.data and loaded.ids.data_ptr() == ids.ctypes.data
    assert loaded.search(index.codes[:4], 1)[1][:, 0].tolist() == [0, 1, 2, 3]


def test_range_search_that_cannot_fit_is_refused_before_the_scan(monkeypatch):
    from dsch_ext.index import _range

    index = dsch_ext.BinaryIndex(8)
    index.add(torch.zeros(70_000, 8))  # every code at distance 0 of a zero query
    monkeypatch.setattr(_range, "available_bytes", lambda device: 10_000_000)
    with pytest.raises(MemoryError, match=r"would return about 70,000,000 results \(0.8 GB"):
        index.range_search(torch.zeros(1000, 8), 0)


def test_range_search_maps_ids_and_keeps_the_order_over_query_chunks():
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 2, (300, 12), generator=g)
    index = dsch_ext.BinaryIndex(12, query_chunk=7)
    index.add(codes, ids=torch.arange(300) * 3 + 11)
    index.remove_ids([11, 14])
    queries = torch.randint(0, 2, (20, 12), generator=g)
    lims, dist, ids = index.range_search(queries, 4)
    want_lims, want_dist, want_pos = dsch_ext.hamming_range(index.pack(queries), index.codes, 4)
    assert torch.equal(lims, want_lims) and torch.equal(dist, want_dist) and torch.equal(ids, index.ids[want_pos])


def test_a_failed_save_names_the_target_and_keeps_the_old_file(tmp_path, monkeypatch):
    from dsch_ext import _atomic

    path = tmp_path / "keep.dbix"
    index = dsch_ext.BinaryIndex(8)
    index.add(torch.zeros(3, 8))
    index.save(path)
    before = path.read_bytes()

    def no_space(*args):
        raise OSError(28, "No space left on device", "/tmp/.keep.dbix.tmp-abc")

    monkeypatch.setattr(_atomic.os, "fsync", no_space)
    with pytest.raises(OSError) as caught:
        index.save(path)
    assert caught.value.filename == str(path) and path.read_bytes() == before


def test_ctrl_c_inside_a_writer_that_fails_while_cleaning_up_stays_an_interrupt(tmp_path):
    # torch.save's zip writer raises its own error from its __exit__ when Ctrl-C lands mid-write;
    # the caller must still see the interrupt (the command line turns it into one line, exit 130).
    from dsch_ext._atomic import atomic_write

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")

    def write(f):
        try:
            f.write(b"partial")
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("unexpected pos 52224 vs 52120")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
