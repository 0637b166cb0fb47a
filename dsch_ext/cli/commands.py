"""What each ``dsch`` subcommand does, given its parsed arguments (``cli.py`` parses). A user
error raises :class:`CliError`, which the command line prints as one line (exit status 2)."""
import json
import os
import sys

import numpy as np
import torch

import dsch_ext

from .. import datasets, distributed
from .._atomic import atomic_write
from ..distributed.comm import LocalCommunicator
from ..dsch.augment import AugmentConfig
from ..dsch.backbones import BackboneError, TorchvisionBackbone
from ..dsch.components import component_statistics, fit_components
from ..dsch.model_file import load_model
from ..dsch.reports import plot_results, results_table
from ..dsch.runs import encode, run_baseline, train_dsch, write_json
from ..dsch.config import DSCHConfig
from ..datasets import protocol_split
from ..evaluation import evaluate_codes
from .errors import CliError, check_device
from .files import load_array, load_codes


def _data(spec):
    try:
        return datasets.load_data(spec)
    except datasets.DataError as exc:
        raise CliError(str(exc)) from exc


def _augment(args):
    overrides = {k: getattr(args, k) for k in ("flip_p", "crop_scale", "max_rotation_deg", "erase_p")
                 if getattr(args, k, None) is not None}
    if getattr(args, "jitter", None) is not None:
        overrides.update(brightness=args.jitter, contrast=args.jitter)
    try:
        return AugmentConfig.preset(getattr(args, "augment", "natural"), **overrides)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _config(args, nbits, baseline=False):
    """From scratch by default; the reference fine-tuning settings with --backbone."""
    names = ("m1", "m2", "covariance_type", "gmm_max_iter", "component_weight", "tau", "batch_size", "lr", "adam_eps",
             "rounds", "epochs_per_round", "seed")
    fields = {f: getattr(args, f) for f in names if getattr(args, f, None) is not None}
    preset = DSCHConfig.fine_tuning if getattr(args, "backbone", None) else DSCHConfig.from_scratch
    return preset(nbits=nbits, baseline=baseline or args.baseline, augment=_augment(args), **fields)


def _backbone(args):
    """The --backbone settings, checked (the architecture is built once to check the weights)."""
    if not getattr(args, "backbone", None):
        for flag in ("weights", "freeze"):
            if getattr(args, flag, None) is not None:
                raise CliError(f"--{flag} needs --backbone")
        return None
    spec = {"name": args.backbone, "weights": args.weights, "freeze": args.freeze or 0, "input_size": args.input_size}
    try:
        TorchvisionBackbone(**spec)
    except BackboneError as exc:
        raise CliError(str(exc)) from exc
    if args.weights is None:
        print(f"no --weights: {args.backbone} starts from random weights", flush=True)
    return spec


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
    check_device(args.device)
    comm = _comm(args)
    backbone = _backbone(args)
    dataset = _data(args.data)
    if backbone is not None and dataset.images.dim() != 4:
        raise CliError(f"--backbone needs images; {args.data} holds features of shape {tuple(dataset.images.shape)}")
    split = protocol_split(dataset, args.query_per_class, args.train_per_class, args.split_seed)
    if comm.rank == 0:
        print(f"data {dataset.name}: {len(dataset)} items; train {split.train.numel()}, query {split.query.numel()}, "
              f"database {split.database.numel()}; {comm.world_size} process(es)", flush=True)
    try:
        record = train_dsch(dataset, split, _config(args, args.bits), args.out, width=args.width,
                            device=args.device, resume=args.resume, distributed=comm.distributed,
                            evaluate=not args.no_eval, backbone=backbone)
    except BaseException as exc:
        if comm.distributed:
            try:
                distributed.shutdown(wait=False)  # no barrier: a peer may be gone
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
        if isinstance(exc, (ValueError, OSError)):  # a checkpoint of another code length, an unusable --out
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


def _save(what, path, write):
    """Write an output file; an unwritable path is one line naming it."""
    try:
        write(path)
    except OSError as exc:
        raise CliError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc


def _model_for(path, dataset, data_spec, device="cpu"):
    """A model file that can encode ``dataset``: (net, config, architecture)."""
    try:
        net, config, arch = load_model(path, device=device)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if arch["kind"] in ("small_cnn", "torchvision") and dataset.images.dim() != 4:
        raise CliError(f"{path} is an image model but {data_spec} holds features of shape "
                       f"{tuple(dataset.images.shape)}")
    if arch["kind"] == "small_cnn" and dataset.images.shape[1] != arch["in_channels"]:
        raise CliError(f"{path} takes images of {arch['in_channels']} channel(s) but {data_spec} holds images of "
                       f"shape {tuple(dataset.images.shape[1:])}")
    if arch["kind"] == "mlp" and dataset.images[0].numel() != arch["in_dim"]:
        raise CliError(f"{path} takes {arch['in_dim']} features but {data_spec} holds items of shape "
                       f"{tuple(dataset.images.shape[1:])}")
    return net, config, arch


def encode_command(args):
    args.device = check_device(args.device)
    dataset = _data(args.data)
    net, _, _ = _model_for(args.model, dataset, args.data, args.device)
    codes = encode(net, dataset.images.to(args.device)).cpu()
    if args.out.endswith(".npy"):
        _save("codes file", args.out, lambda p: atomic_write(p, lambda f: np.save(f, codes.numpy())))
    else:
        index = dsch_ext.BinaryIndex(net.nbits)
        index.add(codes)
        _save("index file", args.out, index.save)
    print(f"wrote {args.out}: {codes.shape[0]} codes of {net.nbits} bits")
    return 0


def eval_command(args):
    args.device = check_device(args.device)
    dataset = _data(args.data)
    split = protocol_split(dataset, args.query_per_class, args.train_per_class, args.split_seed)
    records = []
    for path in args.model or []:
        net, config, _ = _model_for(path, dataset, args.data, args.device)
        q = encode(net, dataset.images[split.query].to(args.device))
        db = encode(net, dataset.images[split.database].to(args.device))
        record = evaluate_codes(q, db, dataset.labels[split.query], dataset.labels[split.database])
        record.update(method=("contrastive" if config.get("baseline") else "dsch"), nbits=net.nbits, model=path)
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


def components_command(args):
    dataset = _data(args.data)
    net, config, _ = _model_for(args.model, dataset, args.data)
    cfg = DSCHConfig.from_dict(config)
    split = protocol_split(dataset, args.query_per_class, args.train_per_class, args.split_seed)
    codes = net.codes(dataset.images[split.train]).double()
    print(f"{args.model}: {cfg.nbits}-bit codes of {codes.shape[0]:,} training images; fitting the E-step "
          f"(m1={cfg.m1}, m2={cfg.m2}, {cfg.covariance_type} covariance)", flush=True)
    comp = fit_components(codes, cfg.m1, cfg.m2, cfg.covariance_type, cfg.gmm_max_iter,
                          normalize_p1=cfg.normalize_p1, resp_threshold=cfg.resp_threshold, random_state=args.seed)
    stats = component_statistics(comp, dataset.labels[split.train], cfg.batch_size, cfg.resp_threshold)
    stats.update(model=args.model, data=dataset.name, batch_size=cfg.batch_size, gmm_iterations=comp.gmm_iterations)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for key, value in stats.items():
            print(f"{key:>28}  {value:.4g}" if isinstance(value, float) else f"{key:>28}  {value}")
    return 0


def _plot(records, path, title):
    try:
        plot_results(records, path, title)
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install matplotlib)", file=sys.stderr)
        return
    print(f"wrote {path}")


def results_command(args):
    from ..experiments.results import PLOT_FILE, TABLES_FILE, run_results  # the bench, only for this command

    base = _config(args, 64)
    try:
        text = run_results(args.out, args.data, args.bits, args.ablation_bits, base,
                           args.estep_iterations, seeds=args.seeds, train_per_class=args.train_per_class)
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


def _index_width(codes, nbits, packed):
    """The index's code length for ``dsch index build``'s codes. uint8 input holding only 0
    and 1 could be one bit per column or packed bytes: then --nbits or --packed must say."""
    if nbits:
        return nbits
    if codes.dtype != torch.uint8:
        if packed:
            raise CliError(f"--packed needs uint8 packed codes, got dtype {codes.dtype}")
        return codes.shape[1]
    if packed or bool((codes > 1).any()):
        return codes.shape[1] * 8
    raise CliError(f"codes are uint8 {tuple(codes.shape)} holding only 0 and 1: pass --nbits {codes.shape[1]} for one "
                   f"bit per column or --packed for packed bytes ({codes.shape[1] * 8} bits)")


def index_build_command(args):
    codes = load_codes(args.codes, "codes")
    if args.nbits is not None and args.nbits < 1:
        raise CliError(f"--nbits must be >= 1, got {args.nbits}")
    ids = load_array(args.ids, "ids") if args.ids else None
    try:
        index = dsch_ext.BinaryIndex(_index_width(codes, args.nbits, args.packed))
        index.add(codes, ids)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    _save("index file", args.out, index.save)
    print(f"wrote {args.out}: {len(index)} codes of {index.nbits} bits")
    return 0


def search_command(args):
    device = check_device(args.device)
    if os.path.isdir(args.index):
        raise CliError(f"index file {args.index} is a directory")
    try:
        index = dsch_ext.BinaryIndex.load(args.index, device=device)
    except (OSError, dsch_ext.IndexFormatError) as exc:
        raise CliError(str(exc)) from exc
    queries = load_codes(args.queries, "queries")
    try:
        dist, ids = index.search(queries, args.k)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    try:
        out = open(args.out, "w") if args.out and args.out != "-" else sys.stdout
    except OSError as exc:
        raise CliError(f"cannot write output file {args.out}: {exc.strerror or exc}") from exc
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
