"""What each ``dsch`` subcommand does, given its parsed arguments (``cli.py`` parses). A user
error raises :class:`CliError`, which the command line prints as one line (exit status 2)."""
import json
import os
import sys

import numpy as np
import torch

import dsch_ext

from .. import distributed
from .._atomic import atomic_write
from ..distributed.comm import LocalCommunicator
from ..dsch.trainer import DSCHConfig
from . import data
from .arrays import load_array
from .errors import CliError
from .models import load_model
from .protocol import encode, evaluate_codes, protocol_split, run_baseline
from .reports import plot_results, results_table
from .results import PLOT_FILE, TABLES_FILE, run_results
from .training import train_dsch, write_json


def _data(spec):
    try:
        return data.load_data(spec)
    except data.DataError as exc:
        raise CliError(str(exc)) from exc


def _config(args, nbits, baseline=False):
    names = ("m1", "m2", "covariance_type", "gmm_max_iter", "lam", "tau", "batch_size", "lr", "adam_eps", "rounds",
             "epochs_per_round", "seed")
    fields = {f: getattr(args, f) for f in names if getattr(args, f, None) is not None}
    return DSCHConfig.from_scratch(nbits=nbits, baseline=baseline or args.baseline, **fields)


def _comm(args):
    if not getattr(args, "distributed", False):
        return LocalCommunicator()
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


def train_command(args):
    comm = _comm(args)
    dataset = _data(args.data)
    split = protocol_split(dataset, args.query_per_class, args.train_per_class, args.split_seed)
    if comm.rank == 0:
        print(f"data {dataset.name}: {len(dataset)} items; train {split.train.numel()}, query {split.query.numel()}, "
              f"database {split.database.numel()}; {comm.world_size} process(es)", flush=True)
    try:
        record = train_dsch(dataset, split, _config(args, args.bits), args.out, width=args.width,
                            device=args.device, resume=args.resume, distributed=comm.distributed,
                            evaluate=not args.no_eval)
    except BaseException as exc:
        if comm.distributed:
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
        distributed.shutdown()
        args.exit_now = True  # see main()
    return 0


def _model(path, device="cpu"):
    try:
        return load_model(path, device=device)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def encode_command(args):
    net, _, _ = _model(args.model, args.device)
    dataset = _data(args.data)
    images = dataset.images
    if net.backbone.__class__.__name__ == "SmallCNN" and images.dim() != 4:
        raise CliError(f"{args.model} is an image model but {args.data} holds features of shape {tuple(images.shape)}")
    codes = encode(net, images.to(args.device)).cpu()
    if args.out.endswith(".npy"):
        atomic_write(args.out, lambda f: np.save(f, codes.numpy()))
    else:
        index = dsch_ext.BinaryIndex(net.nbits)
        index.add(codes)
        index.save(args.out)
    print(f"wrote {args.out}: {codes.shape[0]} codes of {net.nbits} bits")
    return 0


def eval_command(args):
    dataset = _data(args.data)
    split = protocol_split(dataset, args.query_per_class, args.train_per_class, args.split_seed)
    records = []
    for path in args.model or []:
        net, config, _ = _model(path, args.device)
        q = encode(net, dataset.images[split.query].to(args.device))
        db = encode(net, dataset.images[split.database].to(args.device))
        record = evaluate_codes(q, db, dataset.labels[split.query], dataset.labels[split.database])
        record.update(method=("contrastive" if config.get("baseline") else "dsch"), nbits=net.nbits, model=path,
                      train_seconds=float("nan"))
        records.append(record)
    for name in args.baselines:
        for nbits in args.bits:
            records.append(run_baseline(name, dataset, split, nbits, args.seed))
    if not records:
        raise CliError("nothing to evaluate: give --model and/or --baselines")
    print(results_table(records))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(os.path.join(args.out, "eval.json"), {"data": dataset.name, "records": records})
        print(f"wrote {args.out}/eval.json")
        _plot(records, os.path.join(args.out, "eval.png"), dataset.name)
    return 0


def _plot(records, path, title):
    try:
        plot_results(records, path, title)
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install matplotlib)", file=sys.stderr)
        return
    print(f"wrote {path}")


def results_command(args):
    base = _config(args, 64)
    try:
        text = run_results(args.out, args.data, args.bits, args.ablation_bits, base,
                           args.estep_iterations, seeds=args.seeds)
    except (ImportError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    print(text)
    print(f"wrote {os.path.join(args.out, TABLES_FILE)}, {os.path.join(args.out, PLOT_FILE)}")
    return 0


def demo_command(args):
    """DSCH and the baselines on the embedded data, one table."""
    dataset = _data(args.data)
    split = protocol_split(dataset, train_per_class=args.train_per_class)
    cfg = _config(args, args.bits, baseline=False)
    print(f"dsch demo on {dataset.name}: train {split.train.numel()} images, query {split.query.numel()}, "
          f"database {split.database.numel()}, {args.bits} bits, {cfg.rounds} rounds", flush=True)
    records = []
    for name in ("lsh", "pcah", "itq"):
        records.append(run_baseline(name, dataset, split, args.bits))
    out = args.out
    for baseline in (True, False) if args.contrastive else (False,):
        cfg = _config(args, args.bits, baseline=baseline)
        print(f"training {'the contrastive baseline' if baseline else 'DSCH'} ...", flush=True)
        run_dir = os.path.join(out, "contrastive" if baseline else "dsch") if out else None
        records.append(train_dsch(dataset, split, cfg, run_dir, verbose=args.verbose))
    print()
    print(results_table(records))
    if out:
        write_json(os.path.join(out, "demo.json"), {"data": dataset.name, "records": records})
        print(f"wrote {out}/demo.json")
        _plot(records, os.path.join(out, "demo.png"), f"dsch demo, {dataset.name}")
    return 0


def _nbits_of(codes, nbits):
    if nbits:
        return nbits
    return codes.shape[1] * 8 if codes.dtype == torch.uint8 else codes.shape[1]


def index_build_command(args):
    codes = load_array(args.codes, "codes")
    if codes.dim() != 2:
        raise CliError(f"codes must be 2-D [n, nbits], got shape {tuple(codes.shape)} from {args.codes}")
    index = dsch_ext.BinaryIndex(_nbits_of(codes, args.nbits))
    ids = load_array(args.ids, "ids") if args.ids else None
    try:
        index.add(codes, ids)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    index.save(args.out)
    print(f"wrote {args.out}: {len(index)} codes of {index.nbits} bits")
    return 0


def search_command(args):
    try:
        index = dsch_ext.BinaryIndex.load(args.index, device=args.device)
    except (FileNotFoundError, dsch_ext.IndexFormatError) as exc:
        raise CliError(str(exc)) from exc
    queries = load_array(args.queries, "queries")
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


def info_command(args):
    info = dict(dsch_ext.build_info)
    info.update(version=dsch_ext.__version__, torch=torch.__version__, cuda_available=torch.cuda.is_available())
    print(json.dumps(info, indent=2))
    return 0
