"""``dsch eval``, ``dsch encode`` and ``dsch components``: what trained models do on the data."""
import io
import json
import os
import sys

import numpy as np

import dsch_ext

from .._atomic import atomic_write
from ..dsch.components import component_statistics, fit_components
from ..dsch.config import DSCHConfig
from ..dsch.reports import results_table
from ..dsch.runs import encode
from ..evaluation import evaluate_codes
from .common import json_bytes, load_dataset, model_for, plot_bytes, split_of, write_file, write_outputs
from .errors import CliError, check_device
from .training import baseline_records

# What `dsch encode --out` writes, by the file's suffix (any case).
ENCODE_FORMATS = {".npy": "packed codes", ".npz": "packed codes", ".dbix": "an index file"}


def encode_command(args):
    args.device = check_device(args.device)
    suffix = os.path.splitext(args.out)[1].lower()
    if suffix not in ENCODE_FORMATS:
        raise CliError(f"--out {args.out}: the suffix decides what is written: .npy or .npz (packed uint8 codes) or "
                       ".dbix (an index file for dsch search)")
    dataset = load_dataset(args.data)
    net, _, _ = model_for(args.model, dataset, args.data, args.device)
    codes = encode(net, dataset.images.to(args.device)).cpu()
    if suffix == ".dbix":
        index = dsch_ext.BinaryIndex(net.nbits)
        index.add(codes)
        write_file("index file", args.out, index.save)
    else:
        buffer = io.BytesIO()
        (np.save if suffix == ".npy" else lambda f, a: np.savez(f, codes=a))(buffer, codes.numpy())
        write_file("codes file", args.out, lambda p: atomic_write(p, lambda f: f.write(buffer.getvalue())))
    print(f"wrote {args.out} ({ENCODE_FORMATS[suffix]}): {codes.shape[0]} codes of {net.nbits} bits")
    return 0


def eval_command(args):
    args.device = check_device(args.device)
    if not args.model and not args.baselines:
        raise CliError("nothing to evaluate: give --model and/or --baselines")
    dataset = load_dataset(args.data)
    split = split_of(dataset, args.query_per_class, args.train_per_class, args.split_seed)
    records = []
    for path in args.model or []:
        net, config, _ = model_for(path, dataset, args.data, args.device)
        q = encode(net, dataset.images[split.query].to(args.device))
        db = encode(net, dataset.images[split.database].to(args.device))
        record = evaluate_codes(q, db, dataset.labels[split.query], dataset.labels[split.database])
        record.update(method=("contrastive" if config.get("baseline") else "dsch"), nbits=net.nbits, model=path)
        records.append(record)
    records += baseline_records(args.baselines, dataset, split, args.bits, args.seed)
    print(results_table(records))
    if args.out:
        write_outputs(args.out, {"eval.json": json_bytes({"data": dataset.name, "records": records}),
                                 "eval.png": plot_bytes(records, dataset.name)})
    return 0


def components_command(args):
    dataset = load_dataset(args.data)
    net, config, _ = model_for(args.model, dataset, args.data)
    try:
        cfg = DSCHConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise CliError(f"{args.model}: {exc}") from exc
    split = split_of(dataset, args.query_per_class, args.train_per_class, args.split_seed)
    codes = net.codes(dataset.images[split.train]).double()
    # Progress to stderr: with --json, standard output is the JSON alone.
    print(f"{args.model}: {cfg.nbits}-bit codes of {codes.shape[0]:,} training images; fitting the E-step "
          f"(m1={cfg.m1}, m2={cfg.m2}, {cfg.covariance_type} covariance)", file=sys.stderr, flush=True)
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
