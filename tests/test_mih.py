"""BinaryIndex(method="mih"): multi-index tables give the flat scan's answers, tie order
included, on every route (probing, the sample's fallback, the per-query fallback)."""
import numpy as np
import pytest
import torch

import dsch_ext
from dsch_ext.index import _file_format, _mih


@pytest.fixture
def small_tables(monkeypatch):
    """Tables from the first code, so test-sized databases take the probing route."""
    monkeypatch.setattr(_mih, "MIN_CODES", 1)


def clustered_codes(n, nbits, seed, centres=20, flip=0.04):
    """Codes near a few centres (neighbours at small distances), with exact duplicates."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 2, (centres, nbits), generator=g, dtype=torch.uint8)
    codes = base[torch.randint(0, centres, (n,), generator=g)]
    codes ^= (torch.rand(n, nbits, generator=g) < flip).to(torch.uint8)
    codes[n // 3 : n // 3 + 7] = codes[0]
    return codes


def pair(nbits, codes, **mih):
    flat, multi = dsch_ext.BinaryIndex(nbits), dsch_ext.BinaryIndex(nbits, method="mih", **mih)
    flat.add(codes)
    multi.add(codes)
    return flat, multi


def assert_same_topk(flat, multi, queries, k):
    want = flat.search(queries, k)
    got = multi.search(queries, k, stats=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    return got[2]


def assert_same_range(flat, multi, queries, radius, exclusive=False):
    want = flat.range_search(queries, radius, exclusive)
    got = multi.range_search(queries, radius, exclusive, stats=True)
    for a, b in zip(got[:3], want):
        assert torch.equal(a, b)
    return got[3]


@pytest.mark.parametrize("nbits", [1, 7, 24, 37, 64, 100, 128, 256])
def test_topk_and_range_equal_the_flat_scan(nbits, small_tables):
    codes = clustered_codes(1500, nbits, seed=nbits)
    flat, multi = pair(nbits, codes)
    queries = torch.cat([codes[:30], clustered_codes(30, nbits, seed=nbits + 1)])
    for k in (1, 5, 64, 1500):
        stats = assert_same_topk(flat, multi, queries, k)
        assert stats.probed_queries + stats.scanned_queries == queries.shape[0]
    for radius in (0, 1, nbits // 8, nbits // 3, nbits):
        assert_same_range(flat, multi, queries, radius)
        assert_same_range(flat, multi, queries, radius, exclusive=True)


@pytest.mark.parametrize("nbits, substrings", [(64, 2), (100, 4), (57, 2), (96, 3)])
def test_substrings_wider_than_the_directory_equal_the_flat_scan(nbits, substrings, small_tables):
    # Widths of 25-32 bits: a directory of the top 24 bits and the low bits beside the positions.
    codes = clustered_codes(3000, nbits, seed=nbits + substrings, centres=6, flip=0.02)
    flat, multi = pair(nbits, codes, substrings=substrings)
    queries = torch.cat([codes[:25], clustered_codes(25, nbits, seed=1, centres=6, flip=0.02)])
    for k in (1, 9, 400):
        stats = assert_same_topk(flat, multi, queries, k)
        assert stats.substrings == substrings
    for radius in (0, 2, nbits // 6):
        assert_same_range(flat, multi, queries, radius)
    assert multi._tables.suffixes.shape == (substrings, 3000)


def test_ties_go_to_the_lower_position(small_tables):
    codes = torch.zeros(2000, 32, dtype=torch.uint8)
    codes[::3, 5] = 1  # every third code at distance 1, the rest at 0, from the all-zero query
    flat, multi = pair(32, codes)
    query = torch.zeros(1, 32)
    dist, ids = multi.search(query, 1400)
    zeros = torch.nonzero(codes[:, 5] == 0).squeeze(1)
    assert torch.equal(ids[0, : zeros.shape[0]], zeros) and int(dist[0, zeros.shape[0]]) == 1
    assert_same_topk(flat, multi, query, 1400)


def test_one_code_and_k_equal_to_ntotal(small_tables):
    codes = torch.randint(0, 2, (1, 48))
    flat, multi = pair(48, codes)
    assert_same_topk(flat, multi, torch.randint(0, 2, (5, 48)), 1)
    codes = clustered_codes(300, 48, seed=3)
    flat, multi = pair(48, codes)
    assert_same_topk(flat, multi, codes[:9], 300)


def test_every_route_gives_the_same_answers(small_tables, monkeypatch):
    codes = clustered_codes(4000, 64, seed=5)
    flat, multi = pair(64, codes)
    queries = torch.cat([codes[:40], torch.randint(0, 2, (40, 64))])
    routes = set()
    for budget, probe_below in [(1e4, 1e9), (0.0, 1e9), (1e4, 0.0), (0.05, 1e9)]:
        monkeypatch.setattr(_mih, "SAMPLE_BUDGET", budget)
        monkeypatch.setattr(_mih, "BUDGET", budget)
        monkeypatch.setattr(_mih, "PROBE_BELOW", probe_below)
        for k in (1, 10, 200):
            routes.add(assert_same_topk(flat, multi, queries, k).route)
        for radius in (2, 9, 20):
            routes.add(assert_same_range(flat, multi, queries, radius).route)
    assert routes == {"mih", "flat", "mih+flat"}


def test_stats_count_the_work(small_tables, monkeypatch):
    codes = clustered_codes(3000, 64, seed=6)
    flat, multi = pair(64, codes)
    for name in ("SAMPLE_BUDGET", "BUDGET", "PROBE_BELOW"):  # test-sized tables: a scan costs a few codes
        monkeypatch.setattr(_mih, name, 1e4)
    _, _, stats = multi.search(codes[:20], 3, stats=True)
    assert stats.route == "mih" and stats.probed_queries == 20 and stats.scanned_queries == 0
    assert stats.substrings == _mih.default_substrings(64, 3000) and stats.probes >= 20 and stats.candidates >= 60
    monkeypatch.setattr(_mih, "MIN_CODES", 10**6)  # too few codes for tables: the flat scan
    _, _, stats = multi.search(codes[:20], 3, stats=True)
    assert stats == _mih.SearchStats("flat", 0, 20, 0, 0, 0)
    _, _, stats = flat.search(codes[:20], 3, stats=True)
    assert stats.route == "flat"


def test_tables_follow_add_and_remove(small_tables):
    codes = clustered_codes(2500, 40, seed=8)
    flat, multi = pair(40, codes[:1000])
    assert_same_topk(flat, multi, codes[:10], 7)
    built = multi.tables_nbytes()
    assert built > 0
    for index in (flat, multi):
        index.add(codes[1000:], ids=torch.arange(5000, 6500))
    assert_same_topk(flat, multi, codes[:10], 7)
    assert multi.tables_nbytes() > built
    for index in (flat, multi):
        index.remove_ids(torch.arange(0, 2000, 3))
    assert_same_topk(flat, multi, codes[:10], 7)
    assert_same_range(flat, multi, codes[:10], 6)


def test_save_and_load_keep_the_method(tmp_path, small_tables):
    codes = clustered_codes(2000, 64, seed=9)
    flat, multi = pair(64, codes, substrings=5)
    multi.save(tmp_path / "mih.dbix")
    loaded = dsch_ext.BinaryIndex.load(tmp_path / "mih.dbix")
    assert loaded.method == "mih" and loaded.substrings == 5
    assert "method='mih'" in repr(loaded) and loaded.search(codes[:4], 3, stats=True)[2].substrings == 5
    assert_same_topk(flat, loaded, codes[:30], 12)
    as_flat = dsch_ext.BinaryIndex.load(tmp_path / "mih.dbix", method="flat")
    assert as_flat.method == "flat" and as_flat.substrings is None
    flat.save(tmp_path / "flat.dbix")
    assert dsch_ext.BinaryIndex.load(tmp_path / "flat.dbix", method="mih").method == "mih"
    with pytest.raises(ValueError, match="method='flat'"):
        dsch_ext.BinaryIndex.load(tmp_path / "mih.dbix", device="cuda")


def test_a_header_with_impossible_substrings_is_refused(tmp_path):
    codes = np.zeros((3, 2), dtype=np.uint8)
    ids = np.arange(3, dtype=np.int64)
    _file_format.write_index(tmp_path / "bad.dbix", 16, codes, ids, _file_format.method_flags("mih", 40))
    with pytest.raises(_file_format.IndexFormatError, match="40 substrings for 16-bit codes"):
        dsch_ext.BinaryIndex.load(tmp_path / "bad.dbix")
    _file_format.write_index(tmp_path / "odd.dbix", 16, codes, ids, 5 << 8)  # substrings without the method bit
    with pytest.raises(_file_format.IndexFormatError, match="inconsistent header"):
        dsch_ext.BinaryIndex.load(tmp_path / "odd.dbix")


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="lsh"), "method must be one of"),
    (dict(substrings=3), "substrings is for method='mih'"),
    (dict(method="mih", substrings=1), r"substrings must be an int in .* = \[2, 64\]"),
    (dict(method="mih", substrings=65), r"substrings must be an int in .* = \[2, 64\]"),
    (dict(method="mih", substrings=2.5), "substrings"),
    (dict(method="mih", device="cuda"), "searches its tables on the CPU"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dsch_ext.BinaryIndex(64, **kwargs)


def test_moving_a_multi_index_index_to_a_gpu_is_refused():
    index = dsch_ext.BinaryIndex(16, method="mih")
    with pytest.raises(ValueError, match="method='flat'"):
        index.to("cuda")
    assert index.device == torch.device("cpu")


def test_bad_queries_get_the_flat_index_errors(small_tables):
    flat, multi = pair(32, clustered_codes(500, 32, seed=10))
    for call in (lambda i: i.search(torch.zeros(3, 31), 2), lambda i: i.search(torch.zeros(3, 32), 501),
                 lambda i: i.range_search(torch.zeros(3, 32), -1)):
        with pytest.raises(ValueError) as want:
            call(flat)
        with pytest.raises(ValueError) as got:
            call(multi)
        assert str(got.value) == str(want.value)


def test_default_substrings():
    assert _mih.default_substrings(64, 10**8) == 2  # about log2 N = 26.6 bits each
    assert _mih.default_substrings(128, 10**8) == 4
    assert _mih.default_substrings(96, 1000) == 9
    assert _mih.default_substrings(96, 10**12) == 3  # substrings of at most 32 bits
    assert _mih.default_substrings(64, 10**6) == 3
    assert _mih.default_substrings(256, 10**6) == 12
    assert _mih.default_substrings(8, 10) == 2
    assert _mih.substring_widths(37, 3) == [13, 12, 12]


def test_kernels_refuse_tables_that_do_not_fit():
    codes = torch.randint(0, 256, (100, 4), dtype=torch.uint8)
    directory, positions, suffixes = torch.ops.dsch_ext.mih_build(codes, [16, 16])
    with pytest.raises(RuntimeError, match="add up to"):
        torch.ops.dsch_ext.mih_build(codes, [8, 8])
    with pytest.raises(RuntimeError, match=r"must be in \[1, 32\]"):
        torch.ops.dsch_ext.mih_build(codes, [33, 7])
    with pytest.raises(RuntimeError, match="directory must be"):
        torch.ops.dsch_ext.mih_topk(codes[:2], codes, directory[:-1], positions, suffixes, [16, 16], 3, 10**9)
    with pytest.raises(RuntimeError, match="positions must be"):
        torch.ops.dsch_ext.mih_range(codes[:2], codes, directory, positions[:, :50], suffixes, [16, 16], 3, False,
                                     10**9)
    wide = torch.ops.dsch_ext.mih_build(codes, [27, 5])
    assert wide[2].shape == (2, 100)
    with pytest.raises(RuntimeError, match="suffixes must be"):
        torch.ops.dsch_ext.mih_topk(codes[:2], codes, wide[0], wide[1], suffixes, [27, 5], 3, 10**9)


def test_opcheck():
    codes = clustered_codes(400, 64, seed=12)
    packed = dsch_ext.pack_bits(codes)
    for widths in (_mih.substring_widths(64, 3), _mih.substring_widths(64, 2)):
        tables = torch.ops.dsch_ext.mih_build(packed, widths)
        for op, args in [(torch.ops.dsch_ext.mih_build, (packed, widths)),
                         (torch.ops.dsch_ext.mih_topk, (packed[:9], packed, *tables, widths, 5, 10**12)),
                         (torch.ops.dsch_ext.mih_range, (packed[:9], packed, *tables, widths, 6, False, 10**12))]:
            torch.library.opcheck(op.default, args)


def test_command_line_builds_and_searches_a_multi_index_file(tmp_path, capsys):
    from dsch_ext.cli import main as cli

    codes = clustered_codes(600, 32, seed=14).numpy().astype(np.float32)
    np.save(tmp_path / "codes.npy", codes)
    np.save(tmp_path / "queries.npy", codes[:4])
    assert cli.main(["index", "build", "--codes", str(tmp_path / "codes.npy"), "--out", str(tmp_path / "m.dbix"),
                     "--method", "mih", "--substrings", "3"]) == 0
    assert "method mih" in capsys.readouterr().out
    loaded = dsch_ext.BinaryIndex.load(tmp_path / "m.dbix")
    assert loaded.method == "mih" and loaded.substrings == 3
    assert cli.main(["search", "--index", str(tmp_path / "m.dbix"), "--queries", str(tmp_path / "queries.npy"),
                     "-k", "3", "--out", str(tmp_path / "r.json")]) == 0
    import json

    flat = dsch_ext.BinaryIndex(32)
    flat.add(codes)
    assert json.loads((tmp_path / "r.json").read_text())["ids"] == flat.search(codes[:4], 3)[1].tolist()
