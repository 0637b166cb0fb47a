"""Experiments on the retrieval protocol: load data, train DSCH or a baseline, encode,
evaluate, and keep a record. The ``dsch`` command line is a thin layer over these functions.

Data specifications (``load_data``):
    ``embedded``       the 10,000-image Fashion-MNIST test split shipped with dsch_ext (default)
    ``fashion-mnist``  the full 70,000 images ($DSCH_FASHION_MNIST or Debian's package)
    a directory        Fashion-MNIST idx files, or CIFAR-10 python batches
    a ``.npz`` file    ``images`` (or ``features``) and ``labels`` arrays

Model files (``save_model`` / ``load_model``) hold the network's weights, its architecture and
the training configuration; they load with ``torch.load(weights_only=True)`` (no pickled code)
and are written atomically.
"""
import dataclasses
import json
import os
import statistics
import time
from typing import Dict, Optional, Sequence

import torch

from . import baselines, data
from ._atomic import atomic_write
from ._comm import LocalCommunicator
from .evaluation import precision_recall_curve, retrieval_metrics
from .networks import HashNet, MLPBackbone, small_cnn_hash_net
from .trainer import DSCHConfig, DSCHTrainer

MODEL_FORMAT = "dsch_ext.model"
MODEL_VERSION = 1
BASELINES = {"itq": baselines.ITQ, "pcah": baselines.PCAH, "lsh": baselines.LSH}


def load_data(spec: str = "embedded") -> data.Dataset:
    """A data set from a specification (see the module docstring); ``DataError`` says what is
    missing or malformed."""
    if spec in (None, "", "embedded"):
        return data.load_embedded_fashion_mnist()
    if spec == "fashion-mnist":
        if data.fashion_mnist_root() is None:
            raise data.DataError("full Fashion-MNIST not found: apt-get install dataset-fashion-mnist, set "
                                 "DSCH_FASHION_MNIST, or pass its directory (or use --data embedded)")
        return data.load_fashion_mnist()
    if os.path.isdir(spec):
        names = os.listdir(spec)
        if any(n.startswith("data_batch_") or n == "test_batch" for n in names):
            return data.load_cifar10(spec)
        return data.load_fashion_mnist(spec)
    if os.path.isfile(spec):
        if spec.endswith(".npz"):
            return data.load_arrays(spec)
        raise data.DataError(f"{spec}: unknown data file format (use a .npz file or a directory)")
    raise data.DataError(f"data not found: {spec} (use 'embedded', 'fashion-mnist', a directory or a .npz file)")


def protocol_split(dataset: data.Dataset, query_per_class: int = 100, train_per_class: int = 500,
                   seed: int = 0) -> data.RetrievalSplit:
    """DATA.md's protocol, scaled to the data: per class ``query_per_class`` queries and
    ``train_per_class`` training items, capped so a small data set keeps at least a third of
    each class in the database besides the training items."""
    counts = torch.bincount(dataset.labels) if dataset.labels.dim() == 1 else None
    if counts is not None:
        smallest = int(counts[counts > 0].min())
        query_per_class = min(query_per_class, max(1, smallest // 10))
        train_per_class = min(train_per_class, max(1, (smallest - query_per_class) * 2 // 3))
    return data.retrieval_split(dataset.labels, query_per_class, train_per_class, seed)


def build_net(dataset: data.Dataset, nbits: int, width: int = 32, hidden: int = 512) -> HashNet:
    """The small CNN for images, an MLP for feature vectors."""
    x = dataset.images
    if x.dim() == 4:
        return small_cnn_hash_net(nbits, in_channels=x.shape[1], width=width)
    backbone = MLPBackbone(x.shape[1], hidden)
    return HashNet(backbone, backbone.out_dim, nbits)


def _arch(dataset: data.Dataset, width: int, hidden: int) -> Dict:
    x = dataset.images
    if x.dim() == 4:
        return {"kind": "small_cnn", "in_channels": int(x.shape[1]), "width": width}
    return {"kind": "mlp", "in_dim": int(x.shape[1]), "hidden": hidden}


def save_model(path: str, net: HashNet, config: DSCHConfig, arch: Dict, meta: Optional[Dict] = None) -> None:
    """Write a model file atomically (see the module docstring)."""
    state = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "nbits": int(net.nbits), "arch": arch,
             "config": dataclasses.asdict(config), "meta": json.dumps(meta or {}),
             "net": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    atomic_write(path, lambda f: torch.save(state, f))


def load_model(path: str, nbits: Optional[int] = None, device="cpu"):
    """(network in eval mode, config dict, architecture dict) from a model file. Raises
    ``ValueError`` for a file that is not a dsch_ext model, or one with ``nbits`` other than
    the one asked for."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable dsch_ext model file: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a dsch_ext model file (a training checkpoint? use the model.pt "
                         "that `dsch train` writes)")
    if state["version"] > MODEL_VERSION:
        raise ValueError(f"{path} is model format version {state['version']}; this dsch_ext reads <= {MODEL_VERSION}")
    if nbits is not None and int(state["nbits"]) != int(nbits):
        raise ValueError(f"{path} holds {state['nbits']}-bit codes, {nbits} bits were asked for")
    arch = state["arch"]
    if arch["kind"] == "small_cnn":
        net = small_cnn_hash_net(state["nbits"], arch["in_channels"], arch["width"])
    else:
        backbone = MLPBackbone(arch["in_dim"], arch["hidden"])
        net = HashNet(backbone, backbone.out_dim, state["nbits"])
    net.load_state_dict(state["net"])
    return net.to(device).eval(), state["config"], arch


def write_json(path: str, record: Dict) -> None:
    text = json.dumps(record, indent=2, default=float) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _flat(images: torch.Tensor) -> torch.Tensor:
    x = images.flatten(1)
    return x.double() / 255.0 if images.dtype == torch.uint8 else x.double()


def evaluate_codes(query_codes, db_codes, query_labels, db_labels, curve: bool = True) -> Dict:
    """mAP@1000/5000/all, precision@100/1000 and (``curve``) the precision-recall curve."""
    out = {"metrics": retrieval_metrics(query_codes, db_codes, query_labels, db_labels)}
    if curve:
        _, precision, recall = precision_recall_curve(query_codes, db_codes, query_labels, db_labels)
        out["pr_curve"] = {"precision": precision.tolist(), "recall": recall.tolist()}
    return out


def encode(net: HashNet, images: torch.Tensor, comm: Optional[LocalCommunicator] = None,
           batch_size: int = 1024) -> torch.Tensor:
    """Packed codes of ``images`` (sharded over ranks when ``comm`` is distributed: each rank
    encodes a contiguous slice and every rank gets all codes)."""
    from .distributed import shard_range
    from .ops import pack_bits

    comm = comm or LocalCommunicator()
    start, stop = shard_range(images.shape[0], comm)
    mine = pack_bits(net.codes(images[start:stop], batch_size))
    return torch.cat(comm.all_gather_rows(mine)) if comm.distributed else mine


def run_baseline(name: str, dataset: data.Dataset, split: data.RetrievalSplit, nbits: int, seed: int = 0,
                 curve: bool = True) -> Dict:
    """Fit LSH / PCAH / ITQ on the training items' pixels (or features) and evaluate."""
    t0 = time.perf_counter()
    model = BASELINES[name](nbits, random_state=seed).fit(_flat(dataset.images[split.train]))
    t_train = time.perf_counter() - t0
    q = model.encode(_flat(dataset.images[split.query]))
    db = model.encode(_flat(dataset.images[split.database]))
    result = evaluate_codes(q, db, dataset.labels[split.query], dataset.labels[split.database], curve)
    result.update(method=name, nbits=nbits, seed=seed, train_seconds=t_train)
    return result


def train_dsch(dataset: data.Dataset, split: data.RetrievalSplit, config: DSCHConfig, out_dir: Optional[str] = None,
               width: int = 32, device="cpu", resume: bool = False, distributed: bool = False,
               evaluate: bool = True, curve: bool = True, verbose: int = 1, method: Optional[str] = None) -> Dict:
    """Train DSCH (or its baseline mode) on the split's training items, write
    ``out_dir/model.pt`` and ``out_dir/checkpoint.pt``, evaluate on the split's queries and
    database, and return the run's record (configuration, timings, history, metrics)."""
    from ._comm import get_communicator

    comm = get_communicator(distributed)
    torch.manual_seed(config.seed)
    net = build_net(dataset, config.nbits, width)
    checkpoint = os.path.join(out_dir, "checkpoint.pt") if out_dir else None
    if out_dir and comm.rank == 0:
        os.makedirs(out_dir, exist_ok=True)
    comm.barrier()
    trainer = DSCHTrainer(net, config, device=device, checkpoint=checkpoint, verbose=verbose, distributed=distributed)
    t0 = time.perf_counter()
    history = trainer.fit(dataset.images[split.train], dataset.labels[split.train], resume=resume)
    t_train = time.perf_counter() - t0
    record = {
        "method": method or ("contrastive" if config.baseline else "dsch"), "nbits": config.nbits, "seed": config.seed,
        "config": dataclasses.asdict(config), "data": {"name": dataset.name, "items": len(dataset),
                                                       "train": int(split.train.numel()),
                                                       "query": int(split.query.numel()),
                                                       "database": int(split.database.numel())},
        "ranks": comm.world_size, "train_seconds": t_train,
        "estep_seconds": sum(r.estep_seconds for r in history.rounds),
        "mstep_seconds": sum(r.mstep_seconds for r in history.rounds),
        "history": json.loads(history.to_json()),
    }
    if out_dir and comm.rank == 0:
        save_model(os.path.join(out_dir, "model.pt"), net, config, _arch(dataset, width, 512),
                   {"data": dataset.name})
    if evaluate:
        t0 = time.perf_counter()
        q = encode(net, dataset.images[split.query].to(device), comm)
        db = encode(net, dataset.images[split.database].to(device), comm)
        record.update(evaluate_codes(q, db, dataset.labels[split.query], dataset.labels[split.database], curve))
        record["eval_seconds"] = time.perf_counter() - t0
    if out_dir and comm.rank == 0:
        write_json(os.path.join(out_dir, "record.json"), record)
    return record


def _group(records: Sequence[Dict]) -> Dict[str, Dict[int, list]]:
    """``{method: {nbits: [records, one per seed]}}``, methods in order of first appearance."""
    groups: Dict[str, Dict[int, list]] = {}
    for r in records:
        groups.setdefault(r["method"], {}).setdefault(r["nbits"], []).append(r)
    return groups


def _mean_sd(values: Sequence[float]):
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot_results(records: Sequence[Dict], path: str, title: str = "") -> None:
    """One PNG: mAP@1000 against code length for every method (left) and the precision-recall
    curves of the longest codes (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = _group(records)
    several = any(len(rs) > 1 for by_bits in groups.values() for rs in by_bits.values())
    for m, by_bits in groups.items():
        nbits = sorted(by_bits)
        stats = [_mean_sd([r["metrics"]["mAP@1000"] for r in by_bits[b]]) for b in nbits]
        left.errorbar(nbits, [mean for mean, _ in stats], yerr=[sd for _, sd in stats] if several else None,
                      marker="o", capsize=3, label=m)
        longest = by_bits[nbits[-1]][0]  # the first seed's curve
        if "pr_curve" in longest:
            right.plot(longest["pr_curve"]["recall"], longest["pr_curve"]["precision"], label=f"{m} ({longest['nbits']} bits)")
    nbits = sorted({r["nbits"] for r in records})
    left.set(xlabel="bits", ylabel="mAP@1000", xticks=nbits,
             title="mAP@1000 vs code length" + (" (mean ± sd over seeds)" if several else ""))
    right.set(xlabel="recall", ylabel="precision", title="precision-recall (Hamming radius)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)


def results_table(records: Sequence[Dict], keys: Sequence[str] = ("mAP@1000", "mAP@5000")) -> str:
    """A Markdown table: one row per method, one column per (code length, metric)."""
    nbits = sorted({r["nbits"] for r in records})
    head = "| method | " + " | ".join(f"{b} bits {k}" for b in nbits for k in keys) + " | train s |"
    lines = [head, "|" + " --- |" * (len(nbits) * len(keys) + 2)]
    for m, by_bits in _group(records).items():
        cells, seconds = [], []
        for b in nbits:
            r = by_bits[b][0] if b in by_bits else None  # the first record of a cell
            cells += [f"{r['metrics'][k]:.4f}" if r else "" for k in keys]
            if r:
                seconds.append(f"{r['train_seconds']:.0f}")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {' / '.join(seconds)} |")
    return "\n".join(lines)


def estep_comparison(codes: torch.Tensor, m1: int = 1000, m2: int = 100, iterations: int = 3, seed: int = 0,
                     more_iterations: int = 10) -> Dict:
    """PERF.md's E1 at equal EM iterations: DSCH's E-step (full-covariance GMM with k-means
    initialisation, then k-means over its means) with dsch_ext (float64, the sparse M-step the
    trainer uses) and with scikit-learn, on the same codes, at ``iterations`` and again at
    ``more_iterations`` (0: skip). The difference gives each side's time per EM iteration: the
    reference runs up to 100 a round (the trainer's first round ran 46 here, later ones 2-3),
    so a round's ratio lies between the ratio at a few iterations (where the k-means
    initialisation weighs most) and the per-iteration ratio."""
    import warnings

    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from .components import fit_components

    X = codes.double().cpu()

    def ours(its):
        t0 = time.perf_counter()
        comp = fit_components(X, m1, m2, "full", its, min_points_per_component=1, random_state=seed, tol=0.0)
        seconds = time.perf_counter() - t0
        if comp.gmm_iterations != its:
            raise RuntimeError(f"dsch_ext ran {comp.gmm_iterations} EM iterations, not {its}")
        return seconds, comp

    def theirs(its, k1, k2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            gm = SkGaussianMixture(k1, covariance_type="full", max_iter=its, tol=0.0, random_state=seed).fit(X.numpy())
            gm.predict_proba(X.numpy())
            SkKMeans(k2, n_init=1, random_state=seed).fit(gm.means_)
            seconds = time.perf_counter() - t0
        if gm.n_iter_ != its:
            raise RuntimeError(f"scikit-learn ran {gm.n_iter_} EM iterations, not {its}")
        return seconds, gm

    t_ours, comp = ours(iterations)
    t_theirs, gm = theirs(iterations, comp.m1, comp.m2)
    record = {"n": int(X.shape[0]), "nbits": int(X.shape[1]), "m1": comp.m1, "m2": comp.m2, "iterations": iterations,
              "dsch_ext_seconds": t_ours, "sklearn_seconds": t_theirs, "speedup": t_theirs / t_ours,
              "dsch_ext_lower_bound": comp.gmm_lower_bound, "sklearn_lower_bound": float(gm.lower_bound_)}
    if more_iterations > iterations:
        extra = more_iterations - iterations
        ours_per = (ours(more_iterations)[0] - t_ours) / extra
        theirs_per = (theirs(more_iterations, comp.m1, comp.m2)[0] - t_theirs) / extra
        record.update(more_iterations=more_iterations, dsch_ext_seconds_per_iteration=ours_per,
                      sklearn_seconds_per_iteration=theirs_per, speedup_per_iteration=theirs_per / ours_per)
    return record


RESULT_RUNS = {
    # name: (config overrides, description)
    "dsch": ({}, "DSCH"),
    "contrastive": ({"baseline": True}, "contrastive baseline (lambda = 0, S = I)"),
    "no-cooccurrence": ({"cooccurrence": False}, "DSCH without L_ic's co-occurrence (S = I)"),
    "no-fine": ({"fine": False}, "DSCH without fine components (no L_ccf)"),
    "no-coarse": ({"coarse": False}, "DSCH without coarse components (no L_ccc)"),
}


def run_name(name: str, nbits: int, seed: int = 0) -> str:
    """The run directory of one (method, code length, seed) under ``dsch results --out``:
    ``dsch-64`` for seed 0, ``dsch-64-seed1`` for the others."""
    return f"{name}-{nbits}" if seed == 0 else f"{name}-{nbits}-seed{seed}"


def run_results(out_dir: str, data_spec: str = "fashion-mnist", bits: Sequence[int] = (16, 32, 64),
                ablation_bits: int = 32, base: Optional[DSCHConfig] = None, estep_iterations: int = 3,
                verbose: int = 1, seeds: Optional[Sequence[int]] = None) -> str:
    """Everything RESULTS.md reports, one run directory per (method, code length, seed) under
    ``out_dir``; a run whose ``record.json`` exists is reused, so the command can be stopped
    and started again. ``seeds`` (default: ``base.seed``) are training seeds (network
    initialisation, augmentations, validation split, the baselines' random projections and
    rotations); the retrieval split stays DATA.md's. With several seeds the main table gives
    mean ± sd and a table of DSCH's paired differences seed by seed; the ablation and the
    E-step comparison use the first seed. Returns the Markdown text (also written to
    ``out_dir/RESULTS.md``)."""
    base = base or DSCHConfig()
    seeds = list(seeds) if seeds else [base.seed]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    dataset = load_data(data_spec)
    split = protocol_split(dataset)
    os.makedirs(out_dir, exist_ok=True)
    records = []

    def cached(name, nbits, seed, make):
        path = os.path.join(out_dir, run_name(name, nbits, seed), "record.json")
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            trained_with = record.get("seed", record.get("config", {}).get("seed", seed))
            if trained_with != seed:
                raise ValueError(f"{path} holds a run with seed {trained_with}, not {seed}: move it away or use "
                                 "another --out")
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
                records.append(cached(name, nbits, seed, lambda d, n=name, b=nbits, s=seed: run_baseline(
                    n, dataset, split, b, seed=s)))
            for name in ("contrastive", "dsch"):
                cfg = dataclasses.replace(base, nbits=nbits, seed=seed, **RESULT_RUNS[name][0])
                records.append(cached(name, nbits, seed, lambda d, c=cfg, n=name: train_dsch(
                    dataset, split, c, d, verbose=verbose, method=n)))
    first = seeds[0]
    ablations = []
    for name in ("dsch", "no-cooccurrence", "no-fine", "no-coarse", "contrastive"):
        cfg = dataclasses.replace(base, nbits=ablation_bits, seed=first, **RESULT_RUNS[name][0])
        ablations.append(cached(name, ablation_bits, first, lambda d, c=cfg, n=name: train_dsch(
            dataset, split, c, d, verbose=verbose, method=n)))
    e1_bits = max(bits)

    def e1(directory):
        net, _, _ = load_model(os.path.join(out_dir, run_name("dsch", e1_bits, first), "model.pt"))
        codes = net.codes(dataset.images[split.train])
        return {"method": "estep", "nbits": e1_bits,
                **estep_comparison(codes, base.m1, base.m2, iterations=estep_iterations, seed=first)}

    estep = cached("estep", e1_bits, first, e1)
    plot_results(records, os.path.join(out_dir, "results.png"), f"{dataset.name}: {len(split.train)} training images")
    text = results_markdown(dataset, split, records, ablations, estep, dataclasses.replace(base, seed=first), seeds)
    atomic_write(os.path.join(out_dir, "RESULTS.md"), lambda f: f.write(text.encode()))
    return text


def results_markdown(dataset, split, records, ablations, estep, base: DSCHConfig,
                     seeds: Sequence[int] = (0,)) -> str:
    import platform

    bits = sorted({r["nbits"] for r in records})
    several = len(seeds) > 1
    n_classes = int(torch.unique(dataset.labels).numel()) if dataset.labels.dim() == 1 else dataset.labels.shape[1]
    lines = [
        "# Results",
        "",
        f"Data: {dataset.name}, {len(dataset):,} images; the protocol of DATA.md: {split.query.numel():,} queries "
        f"({split.query.numel() // n_classes} a class), database the other {split.database.numel():,}, "
        f"{split.train.numel():,} training images ({split.train.numel() // n_classes} a class, from the database), "
        "split seed 0. Relevant = same class; ranking by `hamming_topk` (ties: lower database index). Machine: "
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Produced by "
        "`dsch results` (see README).",
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
    groups = _group(records)

    def cell(rs, key):
        mean, sd = _mean_sd([r["metrics"][key] for r in rs])
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
    lines += ["", "![mAP@1000 vs code length and precision-recall curves](results.png)", "",
              f"## Ablation ({ablations[0]['nbits']} bits" + (f", seed {seeds[0]})" if several else ")"), "",
              "| run | mAP@1000 | mAP@5000 | train time (s) |",
              "| --- | --- | --- | --- |"]
    for r in ablations:
        lines.append(f"| {RESULT_RUNS[r['method']][1]} | {r['metrics']['mAP@1000']:.4f} | "
                     f"{r['metrics']['mAP@5000']:.4f} | {r['train_seconds']:.0f} |")
    e = estep
    lines += ["", f"## The E-step against scikit-learn (E1, {e['n']:,} codes of {e['nbits']} bits)", "",
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
    return "\n".join(lines)
