"""Plain numpy references for the Hamming ops: slow, obviously correct."""
import numpy as np

POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


def pack_bits(codes):
    """faiss's layout: bit i of byte j is dimension 8j+i; value > 0 is 1."""
    bits = (np.asarray(codes, dtype=np.float64) > 0).astype(np.uint8)
    return np.packbits(bits, axis=1, bitorder="little")


def unpack_bits(packed, nbits):
    bits = np.unpackbits(np.asarray(packed), axis=1, bitorder="little")[:, :nbits]
    return np.where(bits == 1, 1.0, -1.0).astype(np.float32)


def hamming_distance(queries, database):
    q = np.asarray(queries)[:, None, :]
    d = np.asarray(database)[None, :, :]
    return POPCOUNT8[np.bitwise_xor(q, d)].sum(axis=2).astype(np.int32)


def hamming_topk(queries, database, k):
    """Sort every row by (distance, index) and keep k."""
    dist = hamming_distance(queries, database)
    ndb = dist.shape[1]
    order = np.lexsort((np.broadcast_to(np.arange(ndb), dist.shape), dist), axis=1)[:, :k]
    return np.take_along_axis(dist, order, axis=1), order.astype(np.int64)


def random_codes(rng, n, nbytes, alphabet=None):
    """Random packed codes; with `alphabet`, rows are drawn from that many distinct
    codes, which makes duplicate codes and tied distances common."""
    if alphabet is None:
        return rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    pool = rng.integers(0, 256, size=(alphabet, nbytes), dtype=np.uint8)
    return pool[rng.integers(0, alphabet, size=n)]


def hamming_range(queries, database, radius, exclusive=False):
    """(lims, distances, indices): per query, the codes with d <= radius (d < radius when
    exclusive), in index order."""
    dist = hamming_distance(queries, database)
    hit = dist < radius if exclusive else dist <= radius
    lims = np.concatenate([[0], np.cumsum(hit.sum(axis=1))]).astype(np.int64)
    rows, cols = np.nonzero(hit)  # row-major: query order, then index order
    return lims, dist[rows, cols].astype(np.int32), cols.astype(np.int64)
