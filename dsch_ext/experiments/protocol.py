"""The retrieval protocol (docs/protocol.md): the split of a data set into queries, database
and training items, the evaluation of codes on it, encoding with a trained network, and the
shallow baselines (LSH, PCAH, ITQ) fitted and evaluated on the same split."""
import time
from typing import Dict, Optional

import torch

from .. import baselines
from ..distributed.comm import LocalCommunicator
from ..dsch.networks import HashNet
from ..distributed.shard import shard_range
from ..evaluation import precision_recall_curve, retrieval_metrics
from ..ops import pack_bits
from . import data

BASELINES = {"itq": baselines.ITQ, "pcah": baselines.PCAH, "lsh": baselines.LSH}


def protocol_split(dataset: data.Dataset, query_per_class: int = 100, train_per_class: Optional[int] = 500,
                   seed: int = 0) -> data.RetrievalSplit:
    """The protocol of docs/protocol.md, scaled to the data: per class ``query_per_class`` queries and
    ``train_per_class`` training items, capped so a small data set keeps at least a third of
    each class in the database besides the training items; ``train_per_class=None`` trains on
    the whole database."""
    counts = torch.bincount(dataset.labels) if dataset.labels.dim() == 1 else None
    if counts is not None:
        smallest = int(counts[counts > 0].min())
        query_per_class = min(query_per_class, max(1, smallest // 10))
        if train_per_class is not None:
            train_per_class = min(train_per_class, max(1, (smallest - query_per_class) * 2 // 3))
    return data.retrieval_split(dataset.labels, query_per_class, train_per_class, seed)


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
