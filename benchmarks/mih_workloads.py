"""Code sets for the multi-index benchmarks (``test_mih_bench.py``, ``mih_scaling.py``).

- ``uniform``: every bit a fair coin; a query's k-th neighbour is far (about 13 of 64 bits
  at 10^8 codes), the hardest case for any index.
- ``learned``: codes with the structure of learned hashes: sign random projections
  (``nbits`` Gaussian directions) of points drawn from a 1,000-component Gaussian mixture in
  64 dimensions (centres standard normal, each point its centre plus noise of standard
  deviation 0.35). Points of one component share most signs, so neighbours sit at a few bits,
  as they do for a trained network's codes; queries are drawn the same way.
- ``fashion-mnist``: the packed codes of a trained model, from a ``.npy`` file written by
  ``dsch encode`` (the 70,000 images: the first 1,000 rows are the queries).

Generated a million codes at a time, with a fixed seed, so 10^8 codes fit in memory.
"""
import numpy as np
import torch

import dsch_ext

COMPONENTS, DIMENSIONS, SPREAD = 1000, 64, 0.35


def uniform_codes(n: int, nbits: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (n, (nbits + 7) // 8), dtype=torch.uint8, generator=g)
    if nbits % 8:
        codes[:, -1] &= (1 << (nbits % 8)) - 1
    return codes


def learned_codes(n: int, nbits: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(COMPONENTS, DIMENSIONS, generator=g)
    directions = torch.randn(DIMENSIONS, nbits, generator=g)
    out = torch.empty((n, (nbits + 7) // 8), dtype=torch.uint8)
    for start in range(0, n, 1 << 20):
        stop = min(n, start + (1 << 20))
        label = torch.randint(0, COMPONENTS, (stop - start,), generator=g)
        points = centres[label] + SPREAD * torch.randn(stop - start, DIMENSIONS, generator=g)
        out[start:stop] = dsch_ext.pack_bits(points @ directions)
    return out


def workload(kind: str, n: int, nbits: int, nq: int, seed: int = 0, path: str = None):
    """(database uint8 [n, nbits / 8], queries uint8 [nq, nbits / 8]) of one kind."""
    if kind == "fashion-mnist":
        codes = torch.from_numpy(np.load(path))
        return codes[nq:].contiguous(), codes[:nq].contiguous()
    make = uniform_codes if kind == "uniform" else learned_codes
    codes = make(n + nq, nbits, seed)
    return codes[:n].contiguous(), codes[n:].contiguous()


def exact_rank_recall(got_d: np.ndarray, want_d: np.ndarray) -> float:
    """Fraction of (query, rank) slots whose distance is the exact search's: recall that
    counts any of several tied codes as right. Missing results (faiss's -1) count as wrong."""
    return float((got_d == want_d).mean())
