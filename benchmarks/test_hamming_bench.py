"""Hamming top-k and range search against faiss-cpu IndexBinaryFlat and a plain torch search
(workloads H1-H3 and R1 of benchmarks/WORKLOADS.md).

H1: 1,000,000 random 64-bit codes, 1,000 queries, k = 1000
H2: same, k = 10
H3: 1,000,000 random 256-bit codes, 100 queries, k = 10
Each workload is built once; its answers (dsch_ext vs faiss, and vs plain torch on the
first 16 queries) are checked equal before anything is timed. The plain-torch anchor
(xor + byte popcount table + topk) is too slow for the full query sets, so it is timed on the
first 16 queries against dsch_ext on the same 16.
"""
import functools

import numpy as np
import pytest
import torch

import dsch_ext

WORKLOADS = {
    # id: (full size, quick size) as (ndb, nq, nbits, k)
    "H1": ((1_000_000, 1000, 64, 1000), (20_000, 40, 64, 1000)),
    "H2": ((1_000_000, 1000, 64, 10), (20_000, 40, 64, 10)),
    "H3": ((1_000_000, 100, 256, 10), (20_000, 10, 256, 10)),
}
TORCH_QUERIES = 16
_POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)


def torch_topk(queries, database, k, chunk=4):
    """The plain-torch way: distances by byte popcount table, then topk on (distance, index)."""
    ndb = database.shape[0]
    out_d, out_i = [], []
    arange = torch.arange(ndb)
    for q in queries.split(chunk):
        dist = _POPCOUNT8[(q[:, None, :] ^ database[None]).long()].sum(-1)
        key = dist.long() * ndb + arange
        top = torch.topk(key, k, dim=1, largest=False, sorted=True).values
        out_d.append((top // ndb).int())
        out_i.append(top % ndb)
    return torch.cat(out_d), torch.cat(out_i)


def random_codes(seed, ndb, nq, nbits):
    """(queries, database) of random packed codes."""
    g = torch.Generator().manual_seed(seed)
    database = torch.randint(0, 256, (ndb, nbits // 8), dtype=torch.uint8, generator=g)
    queries = torch.randint(0, 256, (nq, nbits // 8), dtype=torch.uint8, generator=g)
    return queries, database


def faiss_flat_index(database, nbits):
    """faiss's IndexBinaryFlat over `database`, or None without faiss-cpu."""
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexBinaryFlat(nbits)
    index.add(database.numpy())
    return index


@functools.lru_cache(maxsize=len(WORKLOADS))
def checked_workload(wid, quick):
    """Random codes for `wid`, with dsch_ext's answer checked against faiss and torch."""
    ndb, nq, nbits, k = WORKLOADS[wid][1 if quick else 0]
    queries, database = random_codes(1234, ndb, nq, nbits)
    dist, index = dsch_ext.hamming_topk(queries, database, k)
    faiss_index = faiss_flat_index(database, nbits)
    if faiss_index is not None:
        fd, fi = faiss_index.search(queries.numpy(), k)
        np.testing.assert_array_equal(dist.numpy(), fd)
        # faiss keeps the lower index among ties too; compare (distance, index) sets per row.
        key = fd.astype(np.int64) * ndb + fi
        np.testing.assert_array_equal(np.sort(key, axis=1), dist.numpy().astype(np.int64) * ndb + index.numpy())
    tq = queries[:TORCH_QUERIES]
    want = torch_topk(tq, database, k)
    assert torch.equal(dist[:TORCH_QUERIES], want[0]) and torch.equal(index[:TORCH_QUERIES], want[1])
    return queries, database, k, faiss_index


def group_name(wid, queries, database, k):
    return f"{wid} topk {database.shape[0]}x{database.shape[1] * 8}b nq={queries.shape[0]} k={k}"


@pytest.mark.parametrize("impl", ["faiss", "dsch_ext"])
@pytest.mark.parametrize("wid", sorted(WORKLOADS))
def test_hamming_topk_vs_faiss(wid, impl, quick, timed):
    queries, database, k, faiss_index = checked_workload(wid, quick)
    group = group_name(wid, queries, database, k)
    if impl == "faiss":
        if faiss_index is None:
            pytest.skip("faiss-cpu is not installed")
        timed(group, "anchor", "faiss IndexBinaryFlat", faiss_index.search, queries.numpy(), k)
    else:
        timed(group, "ours", "dsch_ext.hamming_topk", dsch_ext.hamming_topk, queries, database, k)


@pytest.mark.parametrize("impl", ["torch", "dsch_ext"])
@pytest.mark.parametrize("wid", sorted(WORKLOADS))
def test_hamming_topk_vs_torch(wid, impl, quick, timed):
    queries, database, k, _ = checked_workload(wid, quick)
    queries = queries[:TORCH_QUERIES]
    group = f"{wid}-{TORCH_QUERIES}q topk vs plain torch"
    if impl == "torch":
        timed(group, "anchor", "torch xor+popcount+topk", torch_topk, queries, database, k, rounds=1)
    else:
        timed(group, "ours", "dsch_ext.hamming_topk", dsch_ext.hamming_topk, queries, database, k)


# ---------------------------------------------------------------- R1: range search

RANGE_WORKLOAD = ((200_000, 1000, 64), (20_000, 40, 64))  # (ndb, nq, nbits): full, quick
RANGE_RADII = (8, 22)


@functools.lru_cache(maxsize=2)
def checked_range_workload(quick):
    """R1's codes and faiss index, with dsch_ext's answer checked against faiss's at every
    radius (faiss's radius is exclusive: it gets r + 1 and keeps d < r + 1, i.e. d <= r)."""
    ndb, nq, nbits = RANGE_WORKLOAD[1 if quick else 0]
    queries, database = random_codes(4321, ndb, nq, nbits)
    faiss_index = faiss_flat_index(database, nbits)
    if faiss_index is not None:
        for radius in RANGE_RADII:
            lims, dist, index = dsch_ext.hamming_range(queries, database, radius)
            flims, fdist, findex = faiss_index.range_search(queries.numpy(), radius + 1)
            np.testing.assert_array_equal(lims.numpy(), flims)
            for i in range(nq):  # faiss does not promise an order within a query's list
                a, b = flims[i], flims[i + 1]
                order = np.lexsort((findex[a:b],))
                np.testing.assert_array_equal(index[a:b].numpy(), findex[a:b][order])
                np.testing.assert_array_equal(dist[a:b].numpy(), fdist[a:b][order])
    return queries, database, faiss_index


@pytest.mark.parametrize("impl", ["faiss", "dsch_ext"])
@pytest.mark.parametrize("radius", RANGE_RADII)
def test_hamming_range_vs_faiss(radius, impl, quick, timed):
    queries, database, faiss_index = checked_range_workload(quick)
    group = f"R1 range {database.shape[0]}x{database.shape[1] * 8}b nq={queries.shape[0]} r={radius}"
    if impl == "faiss":
        if faiss_index is None:
            pytest.skip("faiss-cpu is not installed")
        timed(group, "anchor", "faiss range_search", faiss_index.range_search, queries.numpy(), radius + 1)
    else:
        timed(group, "ours", "dsch_ext.hamming_range", dsch_ext.hamming_range, queries, database, radius)


# ---------------------------------------------------------------- the faiss-compatible layer

@pytest.mark.parametrize("wid", sorted(WORKLOADS))
def test_faiss_compat_costs_under_5_percent(wid, quick, record_times):
    """H1-H3 through ``dsch_ext.faiss_compat.IndexBinaryFlat.search`` (numpy in and out, faiss's
    conventions) against ``BinaryIndex.search`` on the same codes: the same answers, and timed,
    at most 5 % slower (best of 5 interleaved rounds each)."""
    import time

    import dsch_ext.faiss_compat as faiss_compat

    queries, database, k, _ = checked_workload(wid, quick)
    nbits = database.shape[1] * 8
    index = dsch_ext.BinaryIndex(nbits)
    index.add(database)
    compat = faiss_compat.IndexBinaryFlat(nbits)
    compat.add(database.numpy())
    q = queries.numpy()
    dist, ids = index.search(queries, k)
    cd, ci = compat.search(q, k)
    np.testing.assert_array_equal(cd, dist.numpy())
    np.testing.assert_array_equal(ci, ids.numpy())
    if quick:
        return
    best = {"BinaryIndex": np.inf, "faiss_compat": np.inf}
    for _ in range(5):
        for name, run in (("BinaryIndex", lambda: index.search(queries, k)),
                          ("faiss_compat", lambda: compat.search(q, k))):
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    record_times(f"{wid} faiss_compat vs BinaryIndex", "BinaryIndex.search", best["BinaryIndex"],
                 "faiss_compat.IndexBinaryFlat", best["faiss_compat"])
    assert best["faiss_compat"] <= 1.05 * best["BinaryIndex"], best
