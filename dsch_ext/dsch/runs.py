"""Runs on the retrieval protocol (docs/protocol.md), each returning a JSON-ready record:
:func:`train_dsch` trains DSCH (or its contrastive baseline), writes the model, checkpoint and
record and evaluates; :func:`run_baseline` fits and evaluates LSH, PCAH or ITQ on the same split;
:func:`encode` gives packed codes of images with a trained network."""
import dataclasses
import json
import os
import shutil
import time
from typing import Dict, Optional

import torch

from .. import baselines
from .._atomic import atomic_write
from ..datasets import Dataset, RetrievalSplit
from ..distributed.comm import LocalCommunicator, get_communicator
from ..distributed.shard import shard_range
from ..evaluation import evaluate_codes
from ..ops import pack_bits
from .model_file import architecture, build_net, save_model
from .networks import HashNet
from .config import DSCHConfig
from .trainer import DSCHTrainer

BASELINES = {"itq": baselines.ITQ, "pcah": baselines.PCAH, "lsh": baselines.LSH}


def write_json(path: str, record: Dict) -> None:
    text = json.dumps(record, indent=2, default=float) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def data_record(dataset: Dataset, split: RetrievalSplit) -> Dict:
    """What a run record says of its data: the data set's name and size, the split's sizes, and
    content hashes of both, so that a finished run is never reused for other data."""
    return {"name": dataset.name, "items": len(dataset), "train": int(split.train.numel()),
            "query": int(split.query.numel()), "database": int(split.database.numel()),
            "fingerprint": dataset.fingerprint(), "split": split.fingerprint()}


def train_dsch(dataset: Dataset, split: RetrievalSplit, config: DSCHConfig, out_dir: Optional[str] = None,
               width: int = 32, device="cpu", resume: bool = False, distributed: bool = False,
               evaluate: bool = True, curve: bool = True, verbose: int = 1, method: Optional[str] = None,
               backbone: Optional[Dict] = None) -> Dict:
    """Train DSCH (or its baseline mode) on the split's training items, write
    ``out_dir/model.pt`` and ``out_dir/checkpoint.pt``, evaluate on the split's queries and
    database, and return the run's record (configuration, timings, history, metrics).
    ``backbone``: a torchvision backbone instead of the small CNN (``models.build_net``).
    A run that fails before its first round is saved leaves no ``out_dir`` behind it it did
    not find; one interrupted later keeps its checkpoint, to resume."""
    comm = get_communicator(distributed)
    torch.manual_seed(config.seed)
    net = build_net(dataset, config.nbits, width, backbone=backbone)
    checkpoint = os.path.join(out_dir, "checkpoint.pt") if out_dir else None
    created = bool(out_dir) and not os.path.exists(out_dir)
    if out_dir and comm.rank == 0:
        os.makedirs(out_dir, exist_ok=True)
    comm.barrier()
    trainer = DSCHTrainer(net, config, device=device, checkpoint=checkpoint, verbose=verbose, distributed=distributed)
    try:
        history = trainer.fit(dataset.images[split.train], dataset.labels[split.train], resume=resume)
    except BaseException:
        if created and comm.rank == 0 and not os.path.exists(checkpoint):
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    record = {
        "method": method or ("contrastive" if config.baseline else "dsch"), "nbits": config.nbits, "seed": config.seed,
        "config": dataclasses.asdict(config), "data": data_record(dataset, split),
        "ranks": comm.world_size, "train_seconds": trainer.train_seconds,
        "architecture": architecture(dataset, width, 512, backbone),
        "weights": (backbone or {}).get("weights"),
        "estep_seconds": sum(r.estep_seconds for r in history.rounds),
        "mstep_seconds": sum(r.mstep_seconds for r in history.rounds),
        "history": json.loads(history.to_json()),
    }
    if out_dir and comm.rank == 0:
        save_model(os.path.join(out_dir, "model.pt"), net, config, architecture(dataset, width, 512, backbone),
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


def encode(net: HashNet, images: torch.Tensor, comm: Optional[LocalCommunicator] = None,
           batch_size: int = 1024) -> torch.Tensor:
    """Packed codes of ``images`` (sharded over ranks when ``comm`` is distributed: each rank
    encodes a contiguous slice and every rank gets all codes)."""
    comm = comm or LocalCommunicator()
    start, stop = shard_range(images.shape[0], comm)
    mine = pack_bits(net.codes(images[start:stop], batch_size))
    return torch.cat(comm.all_gather_rows(mine)) if comm.distributed else mine


def _flat(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] (uint8 images) or the features as they are, float64 [N, D]."""
    x = images.flatten(1)
    return x.double() / 255.0 if images.dtype == torch.uint8 else x.double()


def run_baseline(name: str, dataset: Dataset, split: RetrievalSplit, nbits: int, seed: int = 0,
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
