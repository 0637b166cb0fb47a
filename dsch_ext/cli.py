"""The ``dsch`` command line.

Subcommands:
  dsch demo     pack random binary codes with cluster structure, search them with
                hamming_topk, check the answer against a brute-force ranking, print a summary.
  dsch info     what this copy of dsch_ext was built with.

The command line only parses arguments and prints; the work is done by the library.
"""
import argparse
import json
import sys
import time

import torch


def _demo(args):
    import dsch_ext

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

    # Brute force: all distances, then a stable sort on distance (ties: lower index).
    t0 = time.perf_counter()
    full = dsch_ext.hamming_distance(queries, database).long()
    order = torch.sort(full, dim=1, stable=True).indices[:, : args.k]
    _sync(device)
    t_brute = time.perf_counter() - t0
    exact = torch.equal(order, index) and torch.equal(torch.gather(full, 1, order).int(), dist)

    precision = (db_labels[index.cpu()] == q_labels[:, None]).float().mean().item()
    print(f"dsch_ext {dsch_ext.__version__} demo on {device} ({torch.get_num_threads()} CPU threads)")
    print(f"  database: {database.shape[0]:,} codes of {nbits} bits ({database.numel() / 2**20:.1f} MiB packed), "
          f"queries: {queries.shape[0]:,}, k = {args.k}")
    print(f"  pack_bits        {t_pack * 1e3:9.1f} ms")
    print(f"  hamming_topk     {t_search * 1e3:9.1f} ms   "
          f"({queries.shape[0] * database.shape[0] / t_search / 1e9:.2f} G distances/s)")
    print(f"  brute force      {t_brute * 1e3:9.1f} ms   (all distances + stable sort)")
    print(f"  identical to brute force (distances, indices, ties): {exact}")
    print(f"  precision@{args.k} (same class): {precision:.3f}")
    print("  first query's neighbours (index: distance):",
          ", ".join(f"{i}:{d}" for i, d in zip(index[0, :8].tolist(), dist[0, :8].tolist())))
    return 0 if exact else 1


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _info(args):
    import dsch_ext

    info = dict(dsch_ext.build_info)
    info.update(version=dsch_ext.__version__, torch=torch.__version__, cuda_available=torch.cuda.is_available())
    print(json.dumps(info, indent=2))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="dsch", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="pack and search binary codes, check against brute force")
    demo.add_argument("--database", type=int, default=200_000, help="database size (default 200000)")
    demo.add_argument("--queries", type=int, default=500, help="number of queries (default 500)")
    demo.add_argument("--bits", type=int, default=64, help="code length in bits (default 64)")
    demo.add_argument("-k", type=int, default=100, help="neighbours per query (default 100)")
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="print how dsch_ext was built")
    info.set_defaults(func=_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
