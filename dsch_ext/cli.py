"""The ``dsch`` command line.

Subcommands:
  dsch demo          DSCH against ITQ, PCAH and LSH on the embedded Fashion-MNIST images (no
                     download): trains, evaluates and prints a table (a few minutes on a CPU).
  dsch train         train DSCH (or the contrastive baseline) on the retrieval protocol; writes
                     model.pt, checkpoint.pt and record.json (config, timings, metrics) to --out.
                     Under `torchrun --nproc-per-node N`, --distributed trains on N processes.
  dsch encode        binary codes of a data set with a trained model (.npy packed codes, or an
                     index file for `dsch search`).
  dsch eval          evaluate trained models and/or baselines on the protocol: JSON record,
                     Markdown table, and a PNG (mAP vs code length, precision-recall curves).
  dsch search-demo   pack random binary codes with cluster structure, search them with
                     hamming_topk, check the answer against a brute-force ranking, print a summary.
  dsch index build   build a BinaryIndex file from codes (.npy, .npz or .pt: [n, nbits] values,
                     > 0 is bit 1, or uint8 [n, nbits/8] packed codes).
  dsch search        search an index file with query codes; JSON or CSV out.
  dsch info          what this copy of dsch_ext was built with.

The command line only parses arguments and prints; the work is done by the library.
"""
import argparse
import json
import os
import sys
import time

import torch


def _search_demo(args):
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


def _data(spec):
    from . import data, experiment

    try:
        return experiment.load_data(spec)
    except data.DataError as exc:
        raise CliError(str(exc)) from exc


def _config(args, nbits, baseline=False):
    from .trainer import DSCHConfig

    names = ("m1", "m2", "covariance_type", "gmm_max_iter", "lam", "tau", "batch_size", "lr", "adam_eps", "rounds",
             "epochs_per_round", "seed")
    fields = {f: getattr(args, f) for f in names if getattr(args, f, None) is not None}
    return DSCHConfig.from_scratch(nbits=nbits, baseline=baseline or args.baseline, **fields)


def _comm(args):
    if not getattr(args, "distributed", False):
        from ._comm import LocalCommunicator

        return LocalCommunicator()
    from . import distributed

    # The process group's backend follows the training device: gloo for CPU training even
    # where a GPU is visible (NCCL cannot reduce CPU tensors), NCCL for CUDA, each rank on
    # GPU LOCAL_RANK.
    on_cuda = torch.device(args.device).type == "cuda"
    if on_cuda and torch.device(args.device).index is None:
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        return distributed.init(backend="nccl" if on_cuda else "gloo", timeout=args.timeout)
    except distributed.DistributedError as exc:
        raise CliError(str(exc)) from exc


def _train(args):
    from . import experiment

    comm = _comm(args)
    dataset = _data(args.data)
    split = experiment.protocol_split(dataset, args.query_per_class, args.train_per_class, args.split_seed)
    if comm.rank == 0:
        print(f"data {dataset.name}: {len(dataset)} items; train {split.train.numel()}, query {split.query.numel()}, "
              f"database {split.database.numel()}; {comm.world_size} process(es)", flush=True)
    try:
        record = experiment.train_dsch(dataset, split, _config(args, args.bits), args.out, width=args.width,
                                       device=args.device, resume=args.resume, distributed=comm.distributed,
                                       evaluate=not args.no_eval)
    except BaseException as exc:
        if comm.distributed:
            from . import distributed

            try:
                distributed.shutdown(wait=False)  # no barrier: a peer may be gone
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
        if isinstance(exc, ValueError):  # e.g. a checkpoint of another code length
            raise CliError(str(exc)) from exc
        raise
    if comm.rank == 0:
        metrics = record.get("metrics", {})
        print(f"trained in {record['train_seconds']:.1f} s (E-step {record['estep_seconds']:.1f} s, "
              f"M-step {record['mstep_seconds']:.1f} s); " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        print(f"wrote {args.out}/model.pt, {args.out}/record.json")
    if comm.distributed:
        from . import distributed

        distributed.shutdown()
        args.exit_now = True  # see main()
    return 0


def _model(path, device="cpu"):
    from . import experiment

    try:
        return experiment.load_model(path, device=device)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def _encode(args):
    import numpy as np

    from . import experiment
    from ._atomic import atomic_write

    net, _, _ = _model(args.model, args.device)
    dataset = _data(args.data)
    images = dataset.images
    if net.backbone.__class__.__name__ == "SmallCNN" and images.dim() != 4:
        raise CliError(f"{args.model} is an image model but {args.data} holds features of shape {tuple(images.shape)}")
    codes = experiment.encode(net, images.to(args.device)).cpu()
    if args.out.endswith(".npy"):
        atomic_write(args.out, lambda f: np.save(f, codes.numpy()))
    else:
        import dsch_ext

        index = dsch_ext.BinaryIndex(net.nbits)
        index.add(codes)
        index.save(args.out)
    print(f"wrote {args.out}: {codes.shape[0]} codes of {net.nbits} bits")
    return 0


def _evaluate(args):
    import os

    from . import experiment

    dataset = _data(args.data)
    split = experiment.protocol_split(dataset, args.query_per_class, args.train_per_class, args.split_seed)
    records = []
    for path in args.model or []:
        net, config, _ = _model(path, args.device)
        q = experiment.encode(net, dataset.images[split.query].to(args.device))
        db = experiment.encode(net, dataset.images[split.database].to(args.device))
        record = experiment.evaluate_codes(q, db, dataset.labels[split.query], dataset.labels[split.database])
        record.update(method=("contrastive" if config.get("baseline") else "dsch"), nbits=net.nbits, model=path,
                      train_seconds=float("nan"))
        records.append(record)
    for name in args.baselines:
        for nbits in args.bits:
            records.append(experiment.run_baseline(name, dataset, split, nbits, args.seed))
    if not records:
        raise CliError("nothing to evaluate: give --model and/or --baselines")
    print(experiment.results_table(records))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        experiment.write_json(os.path.join(args.out, "eval.json"), {"data": dataset.name, "records": records})
        print(f"wrote {args.out}/eval.json")
        _plot(records, os.path.join(args.out, "eval.png"), dataset.name)
    return 0


def _plot(records, path, title):
    from . import experiment

    try:
        experiment.plot_results(records, path, title)
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install matplotlib)", file=sys.stderr)
        return
    print(f"wrote {path}")


def _results(args):
    from . import experiment

    base = _config(args, 64)
    try:
        text = experiment.run_results(args.out, args.data, args.bits, args.ablation_bits, base,
                                      args.estep_iterations, seeds=args.seeds)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(text)
    print(f"wrote {args.out}/RESULTS.md")
    return 0


def _demo(args):
    """DSCH and the baselines on the embedded data, one table."""
    import os

    from . import experiment

    dataset = _data(args.data)
    split = experiment.protocol_split(dataset, train_per_class=args.train_per_class)
    cfg = _config(args, args.bits, baseline=False)
    print(f"dsch demo on {dataset.name}: train {split.train.numel()} images, query {split.query.numel()}, "
          f"database {split.database.numel()}, {args.bits} bits, {cfg.rounds} rounds", flush=True)
    records = []
    for name in ("lsh", "pcah", "itq"):
        records.append(experiment.run_baseline(name, dataset, split, args.bits))
    out = args.out
    for baseline in (True, False) if args.contrastive else (False,):
        cfg = _config(args, args.bits, baseline=baseline)
        print(f"training {'the contrastive baseline' if baseline else 'DSCH'} ...", flush=True)
        records.append(experiment.train_dsch(dataset, split, cfg, os.path.join(out, "contrastive" if baseline else "dsch")
                                             if out else None, verbose=args.verbose))
    print()
    print(experiment.results_table(records))
    if out:
        experiment.write_json(os.path.join(out, "demo.json"), {"data": dataset.name, "records": records})
        print(f"wrote {out}/demo.json")
        _plot(records, os.path.join(out, "demo.png"), f"dsch demo, {dataset.name}")
    return 0


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
    def training_options(p):
        p.add_argument("--data", default="embedded", help="'embedded' (default), 'fashion-mnist', a directory "
                       "(Fashion-MNIST idx or CIFAR-10 batches) or a .npz file")
        p.add_argument("--baseline", action="store_true", help="the contrastive baseline (lambda = 0, S = I)")
        p.add_argument("--rounds", type=int, help="EM rounds (default: the reference 10)")
        p.add_argument("--epochs-per-round", type=int, dest="epochs_per_round")
        p.add_argument("--m1", type=int, help="fine components (default 1000, capped at N/5)")
        p.add_argument("--m2", type=int, help="coarse components (default 100)")
        p.add_argument("--covariance-type", dest="covariance_type", choices=("full", "diag", "spherical", "tied"),
                       help="covariance of the fine GMM (default full, the reference)")
        p.add_argument("--gmm-max-iter", type=int, dest="gmm_max_iter")
        p.add_argument("--lam", type=float, help="weight of the component losses (default 1.0; the reference 0.1 is for a pretrained VGG)")
        p.add_argument("--tau", type=float)
        p.add_argument("--batch-size", type=int, dest="batch_size")
        p.add_argument("--lr", type=float)
        p.add_argument("--adam-eps", type=float, dest="adam_eps")
        p.add_argument("--seed", type=int, default=0)

    def protocol_options(p):
        p.add_argument("--query-per-class", type=int, default=100, dest="query_per_class")
        p.add_argument("--train-per-class", type=int, default=500, dest="train_per_class")
        p.add_argument("--split-seed", type=int, default=0, dest="split_seed")

    demo = sub.add_parser("demo", help="DSCH vs ITQ/PCAH/LSH on the embedded Fashion-MNIST images")
    training_options(demo)
    demo.add_argument("--contrastive", action="store_true", help="also train the contrastive baseline (twice the time)")
    demo.add_argument("--bits", type=int, default=32)
    demo.add_argument("--train-per-class", type=int, default=200, dest="train_per_class")
    demo.add_argument("--out", default="", help="directory for demo.json, demo.png and the models")
    demo.add_argument("--verbose", type=int, default=1)
    demo.set_defaults(func=_demo)

    train = sub.add_parser("train", help="train DSCH on the retrieval protocol")
    training_options(train)
    protocol_options(train)
    train.add_argument("--bits", type=int, default=64)
    train.add_argument("--out", required=True, help="run directory (model.pt, checkpoint.pt, record.json)")
    train.add_argument("--width", type=int, default=32, help="CNN width")
    train.add_argument("--device", default="cpu",
                       help="cpu or cuda; with --distributed, cuda means GPU LOCAL_RANK for each rank (NCCL)")
    train.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    train.add_argument("--no-eval", action="store_true", dest="no_eval", help="skip the final evaluation")
    train.add_argument("--distributed", action="store_true", help="one process per rank (launch with torchrun)")
    train.add_argument("--timeout", type=float, default=600.0, help="seconds before a silent rank is an error")
    train.set_defaults(func=_train)

    res = sub.add_parser("results", help="everything RESULTS.md reports (long: DSCH, baseline and ablation runs)")
    training_options(res)
    res.set_defaults(data="fashion-mnist")
    res.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    res.add_argument("--ablation-bits", type=int, default=32, dest="ablation_bits")
    res.add_argument("--estep-iterations", type=int, default=3, dest="estep_iterations")
    res.add_argument("--seeds", type=int, nargs="+",
                     help="training seeds (default: --seed); with several, the tables give mean ± sd and DSCH's "
                          "paired differences; the ablation and E1 use the first")
    res.add_argument("--out", default="results", help="run directories, RESULTS.md and results.png")
    res.set_defaults(func=_results)

    enc = sub.add_parser("encode", help="binary codes of a data set with a trained model")
    enc.add_argument("--model", required=True)
    enc.add_argument("--data", default="embedded")
    enc.add_argument("--out", required=True, help=".npy (packed uint8 codes) or an index file")
    enc.add_argument("--device", default="cpu")
    enc.set_defaults(func=_encode)

    ev = sub.add_parser("eval", help="evaluate models and baselines on the protocol")
    ev.add_argument("--model", action="append", help="a model.pt (repeatable)")
    ev.add_argument("--baselines", nargs="*", default=[], choices=sorted(("itq", "pcah", "lsh")))
    ev.add_argument("--bits", type=int, nargs="*", default=[16, 32, 64], help="code lengths for the baselines")
    ev.add_argument("--data", default="embedded")
    protocol_options(ev)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default="", help="directory for eval.json and eval.png")
    ev.add_argument("--device", default="cpu")
    ev.set_defaults(func=_evaluate)

    demo = sub.add_parser("search-demo", help="pack and search binary codes, check against brute force")
    demo.add_argument("--database", type=int, default=200_000, help="database size (default 200000)")
    demo.add_argument("--queries", type=int, default=500, help="number of queries (default 500)")
    demo.add_argument("--bits", type=int, default=64, help="code length in bits (default 64)")
    demo.add_argument("-k", type=int, default=100, help="neighbours per query (default 100)")
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_search_demo)
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
        code = args.func(args)
    except CliError as exc:
        print(f"dsch: error: {exc}", file=sys.stderr)
        code = 2
    if getattr(args, "exit_now", False):
        # A distributed run: end the process without interpreter finalisation, during which
        # torch.distributed's gloo worker threads can still be releasing tensors of the last
        # collective and abort the process (dsch_ext.distributed.shutdown explains).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
