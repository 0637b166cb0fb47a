"""One training run on the retrieval protocol: train DSCH (or its contrastive baseline), write
the model, checkpoint and a JSON record, and evaluate."""
import dataclasses
import json
import os
import time
from typing import Dict, Optional

import torch

from .._atomic import atomic_write
from ..distributed.comm import get_communicator
from ..dsch.trainer import DSCHConfig, DSCHTrainer
from . import data
from .models import architecture, build_net, save_model
from .protocol import encode, evaluate_codes


def write_json(path: str, record: Dict) -> None:
    text = json.dumps(record, indent=2, default=float) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def train_dsch(dataset: data.Dataset, split: data.RetrievalSplit, config: DSCHConfig, out_dir: Optional[str] = None,
               width: int = 32, device="cpu", resume: bool = False, distributed: bool = False,
               evaluate: bool = True, curve: bool = True, verbose: int = 1, method: Optional[str] = None,
               backbone: Optional[Dict] = None) -> Dict:
    """Train DSCH (or its baseline mode) on the split's training items, write
    ``out_dir/model.pt`` and ``out_dir/checkpoint.pt``, evaluate on the split's queries and
    database, and return the run's record (configuration, timings, history, metrics).
    ``backbone``: a torchvision backbone instead of the small CNN (``models.build_net``)."""
    comm = get_communicator(distributed)
    torch.manual_seed(config.seed)
    net = build_net(dataset, config.nbits, width, backbone=backbone)
    checkpoint = os.path.join(out_dir, "checkpoint.pt") if out_dir else None
    if out_dir and comm.rank == 0:
        os.makedirs(out_dir, exist_ok=True)
    comm.barrier()
    trainer = DSCHTrainer(net, config, device=device, checkpoint=checkpoint, verbose=verbose, distributed=distributed)
    history = trainer.fit(dataset.images[split.train], dataset.labels[split.train], resume=resume)
    record = {
        "method": method or ("contrastive" if config.baseline else "dsch"), "nbits": config.nbits, "seed": config.seed,
        "config": dataclasses.asdict(config), "data": {"name": dataset.name, "items": len(dataset),
                                                       "train": int(split.train.numel()),
                                                       "query": int(split.query.numel()),
                                                       "database": int(split.database.numel())},
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
