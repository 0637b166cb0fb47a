"""The ``dsch`` command line.

Subcommands:
  dsch demo          pack random binary codes with cluster structure, search them with
                     hamming_topk, check the answer against a brute-force ranking, print a summary.
  dsch index build   build a BinaryIndex file from codes (.npy, .npz or .pt: [n, nbits] values,
                     > 0 is bit 1, or uint8 [n, nbits/8] packed codes).
  dsch search        search an index file with query codes; JSON or CSV out.
  dsch info          what this copy of dsch_ext was built with.

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


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _load_array(path, what):
    import os

    import numpy as np

    if not os.path.isfile(path):
        raise CliError(f"{what} file not found: {path}")
    lower = path.lower()
    try:
        if lower.endswith(".npy"):
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if lower.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                key = "codes" if "codes" in z.files else z.files[0]
                return torch.from_numpy(z[key])
        if lower.endswith((".pt", ".pth")):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = obj.get("codes", next(iter(obj.values())))
            if not isinstance(obj, torch.Tensor):
                raise CliError(f"{what} file {path} holds no tensor")
            return obj
    except CliError:
        raise
    except Exception as exc:  # numpy / torch say what is wrong with the file
        raise CliError(f"cannot read {what} file {path}: {exc}") from exc
    raise CliError(f"{what} file {path}: unknown format (use .npy, .npz or .pt)")


def _nbits_of(codes, nbits):
    if nbits:
        return nbits
    return codes.shape[1] * 8 if codes.dtype == torch.uint8 else codes.shape[1]


def _index_build(args):
    import dsch_ext

    codes = _load_array(args.codes, "codes")
    if codes.dim() != 2:
        raise CliError(f"codes must be 2-D [n, nbits], got shape {tuple(codes.shape)} from {args.codes}")
    index = dsch_ext.BinaryIndex(_nbits_of(codes, args.nbits))
    ids = _load_array(args.ids, "ids") if args.ids else None
    try:
        index.add(codes, ids)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    index.save(args.out)
    print(f"wrote {args.out}: {len(index)} codes of {index.nbits} bits")
    return 0


def _search(args):
    import dsch_ext

    try:
        index = dsch_ext.BinaryIndex.load(args.index, device=args.device)
    except (FileNotFoundError, dsch_ext.IndexFormatError) as exc:
        raise CliError(str(exc)) from exc
    queries = _load_array(args.queries, "queries")
    try:
        dist, ids = index.search(queries, args.k)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    out = open(args.out, "w") if args.out and args.out != "-" else sys.stdout
    try:
        if args.format == "json":
            json.dump({"k": args.k, "distances": dist.cpu().tolist(), "ids": ids.cpu().tolist()}, out)
            out.write("\n")
        else:
            out.write("query,rank,id,distance\n")
            for q, (drow, irow) in enumerate(zip(dist.cpu().tolist(), ids.cpu().tolist())):
                for r, (d, i) in enumerate(zip(drow, irow)):
                    out.write(f"{q},{r},{i},{d}\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


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

    index = sub.add_parser("index", help="binary index files")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser("build", help="build an index file from codes")
    build.add_argument("--codes", required=True, help=".npy/.npz/.pt: [n, nbits] values or uint8 packed codes")
    build.add_argument("--out", required=True, help="index file to write (atomically)")
    build.add_argument("--nbits", type=int, default=0, help="code length (default: from the codes)")
    build.add_argument("--ids", help="optional int64 ids [n] (.npy/.npz/.pt)")
    build.set_defaults(func=_index_build)

    search = sub.add_parser("search", help="search an index file")
    search.add_argument("--index", required=True)
    search.add_argument("--queries", required=True, help=".npy/.npz/.pt query codes (same length as the index)")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--format", choices=("json", "csv"), default="json")
    search.add_argument("--out", default="-", help="output file (default: standard output)")
    search.add_argument("--device", default="cpu")
    search.set_defaults(func=_search)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"dsch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
