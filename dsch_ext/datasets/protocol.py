"""The retrieval protocol's split of a data set (docs/protocol.md): queries, database, and
training items drawn from the database."""
from dataclasses import dataclass
from typing import Optional

import torch

from .._fingerprint import fingerprint
from .loaders import DataError, Dataset


@dataclass
class RetrievalSplit:
    query: torch.Tensor  # indices
    database: torch.Tensor
    train: torch.Tensor  # a subset of database

    def fingerprint(self) -> str:
        """A content hash of the three index sets (which items are queries, database, training)."""
        return fingerprint(self.query, self.database, self.train)


def retrieval_split(labels: torch.Tensor, query_per_class: int = 100, train_per_class: Optional[int] = 500,
                    seed: int = 0) -> RetrievalSplit:
    """The paper's protocol: ``query_per_class`` queries of every class, the rest is the
    database, and ``train_per_class`` training items of every class drawn from the database
    (None: the whole database is the training set). Single-label data only; classes with too
    few items raise ``DataError``."""
    if labels.dim() != 1:
        raise DataError("retrieval_split needs single-label data ([N] class ids)")
    g = torch.Generator().manual_seed(seed)
    query, train = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        if members.numel() < query_per_class + (train_per_class or 1):
            raise DataError(f"class {c} has {members.numel()} items, the protocol needs "
                            f"{query_per_class} + {train_per_class}")
        members = members[torch.randperm(members.numel(), generator=g)]
        query.append(members[:query_per_class])
        if train_per_class is not None:
            train.append(members[query_per_class : query_per_class + train_per_class])
    query = torch.sort(torch.cat(query)).values
    in_query = torch.zeros(labels.shape[0], dtype=torch.bool)
    in_query[query] = True
    database = torch.nonzero(~in_query).flatten()
    train = database.clone() if train_per_class is None else torch.sort(torch.cat(train)).values
    return RetrievalSplit(query, database, train)


def protocol_split(dataset: Dataset, query_per_class: int = 100, train_per_class: Optional[int] = 500,
                   seed: int = 0) -> RetrievalSplit:
    """The protocol of docs/protocol.md, scaled to the data: per class ``query_per_class`` queries and
    ``train_per_class`` training items, capped so a small data set keeps at least a third of
    each class in the database besides the training items; ``train_per_class=None`` trains on
    the whole database."""
    # Class sizes by unique ids, not bincount: ids may be large numbers.
    counts = torch.unique(dataset.labels, return_counts=True)[1] if dataset.labels.dim() == 1 else None
    if counts is not None:
        smallest = int(counts.min())
        query_per_class = min(query_per_class, max(1, smallest // 10))
        if train_per_class is not None:
            train_per_class = min(train_per_class, max(1, (smallest - query_per_class) * 2 // 3))
    return retrieval_split(dataset.labels, query_per_class, train_per_class, seed)
