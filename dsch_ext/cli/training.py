"""``dsch train``, ``dsch demo`` and ``dsch results``: training runs on the retrieval protocol."""
import os

from .. import distributed
from ..dsch.reports import results_table
from ..dsch.runs import run_baseline, train_dsch
from .common import (backbone_spec, communicator, json_bytes, load_dataset, plot_bytes, split_of, training_config,
                     write_outputs)
from .errors import CliError, Interrupted, check_device


def train_command(args):
    check_device(args.device)
    comm = communicator(args)
    backbone = backbone_spec(args)
    dataset = load_dataset(args.data)
    if backbone is not None and dataset.images.dim() != 4:
        raise CliError(f"--backbone needs images; {args.data} holds features of shape {tuple(dataset.images.shape)}")
    checkpoint = os.path.join(args.out, "checkpoint.pt")
    if args.resume and not os.path.isfile(checkpoint):
        raise CliError(f"--resume: no checkpoint at {checkpoint} (drop --resume to start a new run)")
    split = split_of(dataset, args.query_per_class, args.train_per_class, args.split_seed)
    config = training_config(args, args.bits)
    if comm.rank == 0:
        print(f"data {dataset.name}: {len(dataset)} items; train {split.train.numel()}, query {split.query.numel()}, "
              f"database {split.database.numel()}; {comm.world_size} process(es)", flush=True)
    try:
        record = train_dsch(dataset, split, config, args.out, width=args.width, device=args.device,
                            resume=args.resume, distributed=comm.distributed, evaluate=not args.no_eval,
                            backbone=backbone)
    except BaseException as exc:
        if comm.distributed:
            try:
                distributed.shutdown(wait=False)  # no barrier: a peer may be gone
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
        if isinstance(exc, KeyboardInterrupt):
            saved = os.path.isfile(checkpoint)
            raise Interrupted(f"the last finished round is saved in {checkpoint}; the same command with --resume "
                              "continues it" if saved else "no round had finished; nothing was saved") from exc
        if isinstance(exc, (ValueError, OSError)):  # a checkpoint of other data or codes, an unusable --out
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


def baseline_records(names, dataset, split, bits, seed=0):
    """LSH / PCAH / ITQ records; a code length the baseline cannot learn is one CliError."""
    records = []
    for name in names:
        for nbits in bits:
            try:
                records.append(run_baseline(name, dataset, split, nbits, seed))
            except ValueError as exc:
                raise CliError(f"{name} at {nbits} bits on {dataset.name}: {exc}") from exc
    return records


def demo_command(args):
    """DSCH and the baselines on the embedded data, one table."""
    dataset = load_dataset(args.data)
    split = split_of(dataset, train_per_class=args.train_per_class)
    config = training_config(args, args.bits, baseline=False)
    print(f"dsch demo on {dataset.name}: train {split.train.numel()} images, query {split.query.numel()}, "
          f"database {split.database.numel()}, {args.bits} bits, {config.rounds} rounds", flush=True)
    records = baseline_records(("lsh", "pcah", "itq"), dataset, split, [args.bits])
    for baseline in (True, False) if args.contrastive else (False,):
        cfg = training_config(args, args.bits, baseline=baseline)
        print(f"training {'the contrastive baseline' if baseline else 'DSCH'} ...", flush=True)
        run_dir = os.path.join(args.out, "contrastive" if baseline else "dsch") if args.out else None
        records.append(train_dsch(dataset, split, cfg, run_dir, verbose=args.verbose))
    print()
    print(results_table(records))
    if args.out:
        write_outputs(args.out, {"demo.json": json_bytes({"data": dataset.name, "records": records}),
                                 "demo.png": plot_bytes(records, f"dsch demo, {dataset.name}")})
    return 0


def results_command(args):
    from ..experiments.results import PLOT_FILE, TABLES_FILE, run_results  # the bench, only for this command

    base = training_config(args, 64)
    try:
        text = run_results(args.out, args.data, args.bits, args.ablation_bits, base,
                           args.estep_iterations, seeds=args.seeds, train_per_class=args.train_per_class)
    except (ImportError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    print(text)
    print(f"wrote {os.path.join(args.out, TABLES_FILE)}, {os.path.join(args.out, PLOT_FILE)}")
    return 0
