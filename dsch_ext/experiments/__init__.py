"""The experiment harness: data sets, the retrieval protocol (docs/protocol.md), training runs
with their model files and records, reports, and the ``dsch`` command line.

- :mod:`.data`: Fashion-MNIST (embedded 10,000 images or the full 70,000), CIFAR-10 batches,
  ``.npz`` arrays, and :func:`~.data.load_data` for the command line's data specifications.
- :mod:`.protocol`: the query / database / training split, evaluation, the shallow baselines.
- :mod:`.models`: model files (weights, architecture, configuration).
- :mod:`.training`: one training run and its record.
- :mod:`.results`, :mod:`.reports`, :mod:`.estep`: what ``dsch results`` runs and writes.
- :mod:`.cli`: the ``dsch`` command.
"""
from .data import DataError, Dataset, RetrievalSplit, load_data
from .models import build_net, load_model, save_model
from .protocol import encode, evaluate_codes, protocol_split, run_baseline
from .training import train_dsch, write_json

__all__ = [
    "DataError", "Dataset", "RetrievalSplit", "build_net", "encode", "evaluate_codes", "load_data", "load_model",
    "protocol_split", "run_baseline", "save_model", "train_dsch", "write_json",
]
