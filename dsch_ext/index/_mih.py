"""Multi-index hashing for :class:`~dsch_ext.index.BinaryIndex` (``method="mih"``): exact top-k
and range search that look codes up in per-substring tables instead of scanning them all
(Norouzi, Punjani and Fleet, TPAMI 2014; the kernels are ``mih_build`` / ``mih_topk`` /
``mih_range``, csrc/cpu/mih.h). The answers, tie order included, are the flat scan's.

Each code is cut into ``m`` substrings of at most 32 bits; by default
``m = max(ceil(nbits / 32), floor(nbits / log2 N))``: substrings of at least log2 N bits (the
paper's choice, rounded towards fewer, wider substrings: on clustered codes they look up
several times fewer codes), so a bucket holds about one code at most. A table costs 4 bytes
per code, 1 more where its substring is wider than 24 bits, and a directory of 4 bytes per
value of the substring's top 24 bits at most (64 MB): at 10^8 codes of 64 bits (m = 2, two
32-bit substrings), 1.13 GB beside the 0.8 GB of codes.

The route, per batch of queries: below 2^16 codes the flat scan (tables are not worth it);
otherwise the first 8 queries probe, each with a budget of half a flat scan of one query,
counted in code pairs (the kernels count a probe as 64 pairs and a code looked at as 200:
fitted on 2 cores with the tables in the caches; from about 10^7 codes a lookup that misses
them costs up to ten times more, so the counts are a floor). From their work the batch's
expected cost per query follows (a query that ran out costs its budget and a scan); from 0.7
flat scans up the batch is scanned, below it the rest probe with the same budget and the
queries that run out are scanned together afterwards. So a batch where probing loses (far
neighbours, large k, uniform codes) costs a flat scan and the sample (8 half-scans by the
count: 0.4 % of a 1,000-query batch, a few per cent where lookups miss the caches), and probing
wins by the ratio of codes it never touches wherever neighbours are near.
"""
import math
from typing import List, NamedTuple, Optional, Tuple

import torch

MIN_CODES = 1 << 16
MAX_CODES = (1 << 31) - 2  # positions are int32
MAX_SUBSTRING_BITS = 32
MAX_SUBSTRINGS = 64
SAMPLE_QUERIES = 8
SAMPLE_BUDGET = 0.5  # work a sampled query may do, in flat scans of one query
BUDGET = 0.5  # work any other query may do before it is left to the scan
PROBE_BELOW = 0.7  # the sample's expected cost per query, in flat scans, under which a batch probes


def worth_tables(n: int) -> bool:
    """Whether n codes get tables: from 2^16 codes (below, a scan is as fast) to 2^31 - 2."""
    return MIN_CODES <= n <= MAX_CODES


def default_substrings(nbits: int, n: int) -> int:
    """m: substrings of at least log2 N bits (so a bucket holds about one code at most; fewer,
    wider substrings look up fewer codes), at most 32 bits each."""
    by_size = math.floor(nbits / max(math.log2(max(n, 2)), 1.0))
    return int(min(nbits, MAX_SUBSTRINGS, max(math.ceil(nbits / MAX_SUBSTRING_BITS), by_size, 1)))


def substring_widths(nbits: int, m: int) -> List[int]:
    """m widths adding up to nbits, the first ``nbits % m`` one bit wider."""
    base, extra = divmod(nbits, m)
    return [base + (1 if j < extra else 0) for j in range(m)]


class SearchStats(NamedTuple):
    """What a search did: ``route`` ``"flat"``, ``"mih"`` or ``"mih+flat"`` (some queries
    answered from the tables, the rest by the scan); queries answered each way; substring
    values probed and codes looked at, all probing counted (a query that ran out of budget
    and was then scanned included, as were the sampled queries of a batch that the sample
    sent to the scan); ``substrings``, m (0 where no tables were used)."""

    route: str
    probed_queries: int
    scanned_queries: int
    probes: int
    candidates: int
    substrings: int

    @staticmethod
    def flat(nq: int) -> "SearchStats":
        return SearchStats("flat", 0, nq, 0, 0, 0)

    def plus(self, other: "SearchStats") -> "SearchStats":
        probed, scanned = self.probed_queries + other.probed_queries, self.scanned_queries + other.scanned_queries
        route = "flat" if not probed else ("mih" if not scanned else "mih+flat")
        return SearchStats(route, probed, scanned, self.probes + other.probes, self.candidates + other.candidates,
                           max(self.substrings, other.substrings))

    def __add__(self, other):  # a NamedTuple's + would concatenate
        return self.plus(other) if isinstance(other, SearchStats) else NotImplemented


class Tables(NamedTuple):
    """The tables of one snapshot of the codes."""

    widths: List[int]
    directory: torch.Tensor  # int32 [sum(2^min(w, 24) + 1)]
    positions: torch.Tensor  # int32 [m, N]
    suffixes: torch.Tensor  # uint8 [m, N]: the low bits of substrings wider than 24 bits ([0, N] if none)

    @staticmethod
    def build(codes: torch.Tensor, nbits: int, substrings: Optional[int]) -> "Tables":
        m = substrings if substrings is not None else default_substrings(nbits, codes.shape[0])
        widths = substring_widths(nbits, m)
        directory, positions, suffixes = torch.ops.dsch_ext.mih_build.default(codes, widths)
        return Tables(widths, directory, positions, suffixes)

    def nbytes(self) -> int:
        return self.directory.numel() * 4 + self.positions.numel() * 4 + self.suffixes.numel()


def _stats_of(work: torch.Tensor, m: int) -> SearchStats:
    """Stats of probing queries from the kernel's work [nq, 3]: the ones that ran out of budget
    count as scanned (and their probes and candidates as work done)."""
    probed = work
    ok = probed[:, 0] >= 0
    probes = torch.where(ok, probed[:, 0], -probed[:, 0] - 1)  # a query that ran out reports -(probes + 1)
    probed_queries, scanned = int(ok.sum()), int((~ok).sum())
    route = "flat" if not probed_queries else ("mih" if not scanned else "mih+flat")
    return SearchStats(route, probed_queries, scanned, int(probes.sum()), int(probed[:, 1].sum()), m)


def expected_cost(work: torch.Tensor, n: int) -> float:
    """Mean cost per query of probing, in flat scans of one query, from a sample's work
    [nq, 3]: a query within its budget costs its work, one that ran out a budget and a scan."""
    within = work[:, 0] >= 0
    return float(torch.where(within, work[:, 2].double() / n, BUDGET + 1.0).mean())


def _all_scanned(sample_work: torch.Tensor, nq: int, tables: Tables) -> SearchStats:
    """Stats of a batch the sample sent to the scan: its probing counted, every query scanned."""
    sample = _stats_of(sample_work, len(tables.widths))
    return SearchStats("flat", 0, nq, sample.probes, sample.candidates, sample.substrings)


def _search(q, codes, tables, probe, scan, join, fill):
    """One batch by the route its first queries suggest (module docstring). ``probe(q,
    budget)``: a kernel's results and work; ``scan(q)``: the flat scan's results; ``join``
    two probed results of consecutive queries; ``fill(found, rows, scanned)``: the probed
    results with ``rows`` replaced by their scan."""
    nq, n = q.shape[0], codes.shape[0]
    head = min(nq, SAMPLE_QUERIES)
    *found, work = probe(q[:head], max(1, int(SAMPLE_BUDGET * n)))
    if nq > head and expected_cost(work, n) >= PROBE_BELOW:
        return scan(q), _all_scanned(work, nq, tables)
    if nq > head:
        *more, more_work = probe(q[head:], max(1, int(BUDGET * n)))
        found, work = join(found, more), torch.cat([work, more_work])
    out_of_budget = work[:, 0] < 0
    if bool(out_of_budget.any()):
        rows = torch.nonzero(out_of_budget).squeeze(1)
        found = fill(found, rows, scan(q[rows]))
    return tuple(found), _stats_of(work, len(tables.widths))


def _tables_args(codes: torch.Tensor, tables: Tables):
    return codes, tables.directory, tables.positions, tables.suffixes, tables.widths


def topk(q: torch.Tensor, codes: torch.Tensor, tables: Tables, k: int):
    """(distances int32 [nq, k], positions int64 [nq, k], stats) of one batch."""
    flat = torch.ops.dsch_ext.hamming_topk.default
    if q.shape[0] == 0 or codes.shape[0] < MIN_CODES:
        return (*flat(q, codes, k), SearchStats.flat(q.shape[0]))
    kernel, args = torch.ops.dsch_ext.mih_topk.default, _tables_args(codes, tables)

    def fill(found, rows, scanned):
        found[0][rows], found[1][rows] = scanned
        return found

    found, stats = _search(q, codes, tables, lambda qq, budget: kernel(qq, *args, k, budget),
                           lambda qq: flat(qq, codes, k),
                           lambda a, b: (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])), fill)
    return (*found, stats)


def range_chunk(q: torch.Tensor, codes: torch.Tensor, tables: Tables, radius: int, exclusive: bool):
    """``hamming_range``'s (lims, distances, positions) of one chunk of queries, and stats."""
    flat = torch.ops.dsch_ext.hamming_range.default
    if q.shape[0] == 0 or codes.shape[0] < MIN_CODES:
        return (*flat(q, codes, radius, exclusive), SearchStats.flat(q.shape[0]))
    kernel, args = torch.ops.dsch_ext.mih_range.default, _tables_args(codes, tables)
    found, stats = _search(q, codes, tables, lambda qq, budget: kernel(qq, *args, radius, exclusive, budget),
                           lambda qq: flat(qq, codes, radius, exclusive), _concat,
                           lambda found, rows, scanned: _splice(*found, rows, *scanned))
    return (*found, stats)


def _concat(first, second):
    """Two consecutive query blocks' (lims, distances, positions) as one."""
    lims = torch.cat([first[0], second[0][1:] + first[0][-1]])
    return lims, torch.cat([first[1], second[1]]), torch.cat([first[2], second[2]])


def _splice(lims, dist, pos, rows, flims, fdist, fpos):
    """The CSR lists with the (empty) lists of ``rows`` replaced by the flat scan's."""
    counts = lims[1:] - lims[:-1]
    counts[rows] = flims[1:] - flims[:-1]
    new_lims = torch.zeros_like(lims)
    torch.cumsum(counts, 0, out=new_lims[1:])
    source = torch.zeros(lims.shape[0] - 1, dtype=torch.bool)
    source[rows] = True
    # Every output slot takes its entry from the probed lists or, for the rows in `rows`, the scanned ones.
    owner = torch.repeat_interleave(torch.arange(counts.shape[0]), counts)
    offset = torch.arange(int(new_lims[-1])) - new_lims[owner]
    from_flat = source[owner]
    rank = torch.full((counts.shape[0],), -1, dtype=torch.int64)
    rank[rows] = torch.arange(rows.shape[0])
    out_d = torch.empty(int(new_lims[-1]), dtype=dist.dtype)
    out_p = torch.empty(int(new_lims[-1]), dtype=pos.dtype)
    take_flat = flims[rank[owner[from_flat]]] + offset[from_flat]
    take_mih = lims[owner[~from_flat]] + offset[~from_flat]
    out_d[from_flat], out_p[from_flat] = fdist[take_flat], fpos[take_flat]
    out_d[~from_flat], out_p[~from_flat] = dist[take_mih], pos[take_mih]
    return new_lims, out_d, out_p
