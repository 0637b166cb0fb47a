"""``dsch results``: every run the results report needs, one run directory per (method, code
length, seed), reused when its record exists, and the generated tables and plot."""
import dataclasses
import json
import os
import platform
from typing import Optional, Sequence

import torch

from .._atomic import atomic_write
from .._version import __version__
from ..datasets import load_data, protocol_split
from ..dsch.model_file import load_model
from ..dsch.reports import group_records, mean_sd, plot_results
from ..dsch.runs import data_record, run_baseline, train_dsch, write_json
from ..dsch.config import DSCHConfig
from .estep import estep_comparison


TABLES_FILE = "tables.md"
PLOT_FILE = "results.png"
REQUIRED_MODULES = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}

RESULT_RUNS = {
    # name: (config overrides, description)
    "dsch": ({}, "DSCH"),
    "contrastive": ({"baseline": True}, "contrastive baseline (lambda = 0, S = I)"),
    "no-cooccurrence": ({"cooccurrence": False}, "DSCH without L_ic's co-occurrence (S = I)"),
    "no-fine": ({"fine": False}, "DSCH without fine components (no L_ccf)"),
    "no-coarse": ({"coarse": False}, "DSCH without coarse components (no L_ccc)"),
}


def _commit_note() -> str:
    """", commit abc1234" when dsch_ext runs from a git checkout, else nothing."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return f", commit {out.stdout.strip()}" if out.returncode == 0 and out.stdout.strip() else ""


def check_dependencies() -> None:
    """Raise ImportError naming what ``run_results`` needs and lacks (scikit-learn for the E-step
    comparison, matplotlib for the plot), before any training starts."""
    import importlib.util

    missing = [package for module, package in REQUIRED_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"dsch results needs {' and '.join(missing)}: pip install 'dsch_ext[results]'")


def run_name(name: str, nbits: int, seed: int = 0) -> str:
    """The run directory of one (method, code length, seed) under ``dsch results --out``:
    ``dsch-64`` for seed 0, ``dsch-64-seed1`` for the others."""
    return f"{name}-{nbits}" if seed == 0 else f"{name}-{nbits}-seed{seed}"


def run_results(out_dir: str, data_spec: str = "fashion-mnist", bits: Sequence[int] = (16, 32, 64),
                ablation_bits: int = 32, base: Optional[DSCHConfig] = None, estep_iterations: int = 3,
                verbose: int = 1, seeds: Optional[Sequence[int]] = None,
                train_per_class: Optional[int] = 500) -> str:
    """Everything RESULTS.md reports, one run directory per (method, code length, seed) under
    ``out_dir``; a run whose ``record.json`` exists is reused, so the command can be stopped
    and started again. ``seeds`` (default: ``base.seed``) are training seeds (network
    initialisation, augmentations, validation split, the baselines' random projections and
    rotations); the retrieval split is always the protocol's (split seed 0). With several seeds
    the main table gives mean ± sd and a table of DSCH's paired differences seed by seed; the
    ablation and the E-step comparison use the first seed; ``ablation_bits=0`` leaves the
    ablation out and ``estep_iterations=0`` the E-step comparison. ``train_per_class`` is the
    protocol's training-set size (``None``: the whole database); a reused run must have been
    trained on the same number of images. Writes the generated tables to
    ``out_dir/tables.md`` and the plot to ``out_dir/results.png`` (the hand-written analysis
    lives elsewhere and links them) and returns the tables' Markdown text."""
    check_dependencies()
    base = base or DSCHConfig()
    seeds = list(seeds) if seeds else [base.seed]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    if ablation_bits < 0 or estep_iterations < 0:
        raise ValueError(f"ablation_bits and estep_iterations must be >= 0 (0: left out), got {ablation_bits} and "
                         f"{estep_iterations}")
    dataset = load_data(data_spec)
    split = protocol_split(dataset, train_per_class=train_per_class)
    n_train = int(split.train.numel())
    data = data_record(dataset, split)
    os.makedirs(out_dir, exist_ok=True)
    records = []

    def cached(name, nbits, seed, make, config=None):
        path = os.path.join(out_dir, run_name(name, nbits, seed), "record.json")
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            _check_reused(path, record, seed, data, config)
        else:
            if verbose:
                print(f"=== {name}, {nbits} bits, seed {seed}", flush=True)
            record = make(os.path.dirname(path))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_json(path, record)
        record.setdefault("seed", seed)
        return record

    for seed in seeds:
        for nbits in bits:
            for name in ("lsh", "pcah", "itq"):
                records.append(cached(name, nbits, seed, lambda d, n=name, b=nbits, s=seed: dict(run_baseline(
                    n, dataset, split, b, seed=s), data=data)))
            for name in ("contrastive", "dsch"):
                cfg = dataclasses.replace(base, nbits=nbits, seed=seed, **RESULT_RUNS[name][0])
                records.append(cached(name, nbits, seed, lambda d, c=cfg, n=name: train_dsch(
                    dataset, split, c, d, verbose=verbose, method=n), cfg))
    first = seeds[0]
    ablations = []
    for name in ("dsch", "no-cooccurrence", "no-fine", "no-coarse", "contrastive") if ablation_bits else ():
        cfg = dataclasses.replace(base, nbits=ablation_bits, seed=first, **RESULT_RUNS[name][0])
        ablations.append(cached(name, ablation_bits, first, lambda d, c=cfg, n=name: train_dsch(
            dataset, split, c, d, verbose=verbose, method=n), cfg))
    estep_bits = max(bits)

    def estep_run(directory):
        net, _, _ = load_model(os.path.join(out_dir, run_name("dsch", estep_bits, first), "model.pt"))
        codes = net.codes(dataset.images[split.train])
        return {"method": "estep", "nbits": estep_bits, "data": data,
                **estep_comparison(codes, base.m1, base.m2, iterations=estep_iterations, seed=first)}

    estep = cached("estep", estep_bits, first, estep_run) if estep_iterations else None
    plot_results(records, os.path.join(out_dir, PLOT_FILE), f"{dataset.name}: {len(split.train)} training images")
    text = results_markdown(dataset, split, records, ablations, estep, dataclasses.replace(base, seed=first), seeds)
    atomic_write(os.path.join(out_dir, TABLES_FILE), lambda f: f.write(text.encode()))
    return text


def _threads(records) -> str:
    """"2 threads", or what the training runs' M-steps recorded when that differs."""
    used = sorted({r.get("mstep_threads") for rec in records for r in rec.get("history", {}).get("rounds", [])
                   if r.get("mstep_threads")})
    counts = used or [torch.get_num_threads()]
    return f"{' / '.join(map(str, counts))} thread{'s' if counts != [1] else ''}" + (" (training runs)" if used else "")


def _check_reused(path: str, record: dict, seed: int, data: dict, config: Optional[DSCHConfig]) -> None:
    """A finished run is reused only if it is the run this call would train: same seed, same
    data (its content hash and the split's, where the record has them; else the data set's
    name and sizes), and (training runs) the same settings; else a ValueError naming the file
    and the first differences."""
    trained_with = record.get("seed", record.get("config", {}).get("seed", seed))
    if trained_with != seed:
        raise ValueError(f"{path} holds a run with seed {trained_with}, not {seed}: move it away or use another --out")
    used = record.get("data", {})
    if "name" not in used:
        raise ValueError(f"{path} holds no record of its data: move it away or use another --out")
    other_data = used.get("fingerprint", data["fingerprint"]) != data["fingerprint"] or used["name"] != data["name"] or \
        used.get("items", data["items"]) != data["items"]
    if other_data:
        raise ValueError(f"{path} holds a run of other data ({used['name']}, {used.get('items', '?')} items; this call: "
                         f"{data['name']}, {data['items']} items): move it away or use another --out")
    if used.get("train", data["train"]) != data["train"]:
        raise ValueError(f"{path} holds a run trained on {used['train']:,} images, not {data['train']:,}: move it "
                         "away or use another --out")
    if used.get("split", data["split"]) != data["split"]:
        raise ValueError(f"{path} holds a run on another split of the same data: move it away or use another --out")
    if config is None:
        return
    wanted = config.as_record()
    used = DSCHConfig.from_dict(record.get("config", {})).as_record() if record.get("config") else {}
    differ = [f"{key}={used.get(key)!r} (this call: {value!r})" for key, value in wanted.items()
              if used.get(key) != value]
    if differ:
        raise ValueError(f"{path} was trained with other settings: {', '.join(differ[:3])}; pass the same options "
                         "or use another --out")


def results_markdown(dataset, split, records, ablations, estep, base: DSCHConfig,
                     seeds: Sequence[int] = (0,)) -> str:
    bits = sorted({r["nbits"] for r in records})
    several = len(seeds) > 1
    n_classes = int(torch.unique(dataset.labels).numel()) if dataset.labels.dim() == 1 else dataset.labels.shape[1]
    lines = [
        "# Results: generated tables",
        "",
        f"Written by `dsch results` (dsch_ext {__version__}{_commit_note()}); RESULTS.md holds the analysis.",
        "",
        f"Data: {dataset.name}, {len(dataset):,} images; the protocol of docs/protocol.md: {split.query.numel():,} queries "
        f"({split.query.numel() // n_classes} a class), database the other {split.database.numel():,}, "
        f"{split.train.numel():,} training images ({split.train.numel() // n_classes:,} a class, from the database), "
        "split seed 0. Relevant = same class; ranking by `hamming_topk` (ties: lower database index). Machine: "
        f"{platform.machine()}, {_threads(records)}, torch {torch.__version__}. Produced by "
        "`dsch results`.",
        "",
        "Training settings (all DSCH runs): " + ", ".join(
            f"{k}={v}" for k, v in dataclasses.asdict(base).items()
            if k not in ("nbits", "baseline") and not (several and k == "seed")) + ".",
        "",
    ]
    if several:
        lines += [f"Training seeds {', '.join(map(str, seeds))} (network initialisation, augmentations, validation "
                  "split, the baselines' projections and rotations; the retrieval split is the same): every cell is "
                  "mean ± sample standard deviation over them; times are the fastest seed's.", ""]
    lines += [
        "## mAP@1000 / mAP@5000 and training time",
        "",
        "| method | " + " | ".join(f"{b} bits" for b in bits) + " | train time (s) | of which E-steps (s) |",
        "|" + " --- |" * (len(bits) + 3),
    ]
    groups = group_records(records)

    def cell(rs, key):
        mean, sd = mean_sd([r["metrics"][key] for r in rs])
        return f"{mean:.4f} ± {sd:.4f}" if several else f"{mean:.4f}"

    for m, by_bits in groups.items():
        cells, times, esteps = [], [], []
        for b in bits:
            rs = by_bits.get(b)
            cells.append(f"{cell(rs, 'mAP@1000')} / {cell(rs, 'mAP@5000')}" if rs else "")
            if rs:  # the fastest seed: other work on the machine only ever adds time
                t = min(r["train_seconds"] for r in rs)
                times.append(f"{t:.0f}" if t >= 1 else f"{t:.2f}")
                if all("estep_seconds" in r for r in rs):
                    esteps.append(f"{min(r['estep_seconds'] for r in rs):.0f}")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {' / '.join(times)} | {' / '.join(esteps) or '—'} |")
    if several and "dsch" in groups:
        lines += ["", "## DSCH against the others, seed by seed", "",
                  "mAP@1000 of DSCH minus that of the other method trained with the same seed, in points (×100):", "",
                  "| bits | against | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
                  "|" + " --- |" * (len(seeds) + 3)]
        for b in bits:
            ours = {r["seed"]: r["metrics"]["mAP@1000"] for r in groups["dsch"].get(b, [])}
            for other in ("contrastive", "itq", "pcah", "lsh"):
                theirs = {r["seed"]: r["metrics"]["mAP@1000"] for r in groups.get(other, {}).get(b, [])}
                diffs = [100 * (ours[s] - theirs[s]) if s in ours and s in theirs else None for s in seeds]
                known = [d for d in diffs if d is not None]
                if known:
                    lines.append(f"| {b} | {other} | " + " | ".join("" if d is None else f"{d:+.1f}" for d in diffs)
                                 + f" | **{sum(known) / len(known):+.1f}** |")
    lines += ["", "![mAP@1000 vs code length and precision-recall curves](results.png)", ""]
    if ablations:
        lines += _ablation_lines(ablations, f", seed {seeds[0]}" if several else "")
    if estep:
        lines += _estep_lines(estep)
    return "\n".join(lines)


def _ablation_lines(ablations, seed_note: str):
    lines = [f"## Ablation ({ablations[0]['nbits']} bits{seed_note})", "",
             "| run | mAP@1000 | mAP@5000 | train time (s) |",
             "| --- | --- | --- | --- |"]
    for r in ablations:
        lines.append(f"| {RESULT_RUNS[r['method']][1]} | {r['metrics']['mAP@1000']:.4f} | "
                     f"{r['metrics']['mAP@5000']:.4f} | {r['train_seconds']:.0f} |")
    return lines + [""]


def _estep_lines(e):
    lines = [f"## The E-step against scikit-learn ({e['n']:,} codes of {e['nbits']} bits)", "",
             f"GMM with {e['m1']} full-covariance components (k-means initialisation) and k-means with {e['m2']} "
             f"clusters over its means, {e['iterations']} EM iterations on both sides (the reference runs up to 100 "
             "a round; the time per round scales with them). Each library draws its own k-means initialisation, "
             "so the lower bounds differ slightly:", "",
             "| | seconds | lower bound |", "| --- | --- | --- |",
             f"| dsch_ext (float64, sparse M-step) | {e['dsch_ext_seconds']:.2f} | {e['dsch_ext_lower_bound']:.4f} |",
             f"| scikit-learn | {e['sklearn_seconds']:.2f} | {e['sklearn_lower_bound']:.4f} |",
             f"| speed-up | **{e['speedup']:.1f}×** | |", ""]
    if "speedup_per_iteration" in e:
        lines += [f"Each further EM iteration (from runs of {e['iterations']} and {e['more_iterations']} iterations): "
                  f"dsch_ext {e['dsch_ext_seconds_per_iteration'] * 1e3:.0f} ms, scikit-learn "
                  f"{e['sklearn_seconds_per_iteration'] * 1e3:.0f} ms: **{e['speedup_per_iteration']:.1f}×**. A round "
                  "of many iterations (the first, or the reference's up to 100) approaches this ratio.", ""]
    return lines
