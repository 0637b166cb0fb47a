"""``dsch search-demo``: pack random binary codes with class structure, search them with
hamming_topk, check the answer against a brute-force ranking and print a summary."""
import time

import torch

import dsch_ext

from .errors import CliError, check_device


def search_demo(args):
    if args.k > args.database:
        raise CliError(f"-k must be in [1, --database] = [1, {args.database}], got {args.k}")
    args.device = str(check_device(args.device))
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(args.seed)
    nbits, nclass = args.bits, 10
    # Codes with structure: each class has a prototype; items flip ~15% of its bits.
    prototypes = torch.randint(0, 2, (nclass, nbits), generator=g).bool()
    labels = torch.randint(0, nclass, (args.database + args.queries,), generator=g)
    flips = torch.rand(labels.shape[0], nbits, generator=g) < 0.15
    codes = prototypes[labels] ^ flips
    t0 = time.perf_counter()
    packed = dsch_ext.pack_bits(codes.to(device))
    t_pack = time.perf_counter() - t0
    queries, database = packed[: args.queries], packed[args.queries :]
    q_labels, db_labels = labels[: args.queries], labels[args.queries :]

    dsch_ext.hamming_topk(queries[:1], database, args.k)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    dist, index = dsch_ext.hamming_topk(queries, database, args.k)
    _sync(device)
    t_search = time.perf_counter() - t0

    # Brute force on the first queries: all distances, then a stable sort on distance (ties:
    # lower index), which is what hamming_topk must reproduce exactly.
    nb = min(64, queries.shape[0])
    t0 = time.perf_counter()
    full = dsch_ext.hamming_distance(queries[:nb], database).long()
    order = torch.sort(full, dim=1, stable=True).indices[:, : args.k]
    _sync(device)
    t_brute = (time.perf_counter() - t0) * queries.shape[0] / nb
    exact = torch.equal(order, index[:nb]) and torch.equal(torch.gather(full, 1, order).int(), dist[:nb])

    precision = (db_labels[index.cpu()] == q_labels[:, None]).float().mean().item()
    print(f"dsch_ext {dsch_ext.__version__} demo on {device} ({torch.get_num_threads()} CPU threads)")
    print(f"  database: {database.shape[0]:,} codes of {nbits} bits ({database.numel() / 2**20:.1f} MiB packed), "
          f"queries: {queries.shape[0]:,}, k = {args.k}")
    print(f"  pack_bits        {t_pack * 1e3:9.1f} ms")
    print(f"  hamming_topk     {t_search * 1e3:9.1f} ms   "
          f"({queries.shape[0] * database.shape[0] / t_search / 1e9:.2f} G distances/s)")
    print(f"  brute force      {t_brute * 1e3:9.1f} ms   (all distances + stable sort, extrapolated from {nb} queries)")
    print(f"  identical to brute force on {nb} queries (distances, indices, ties): {exact}")
    print(f"  precision@{args.k} (same class): {precision:.3f}")
    print("  first query's neighbours (index: distance):",
          ", ".join(f"{i}:{d}" for i, d in zip(index[0, :8].tolist(), dist[0, :8].tolist())))
    return 0 if exact else 1


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
