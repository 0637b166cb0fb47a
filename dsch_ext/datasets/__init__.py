"""Data sets and the retrieval protocol's split, for training and evaluating hash functions.

- :func:`load_data`: a data set from a specification: ``'embedded'`` (the 10,000-image
  Fashion-MNIST test split shipped in this package), ``'fashion-mnist'`` (all 70,000, when
  installed), a directory (Fashion-MNIST idx files or CIFAR-10 python batches) or an ``.npz``
  file of arrays; :class:`DataError` says what is missing or malformed.
- :func:`retrieval_split` / :func:`protocol_split`: queries, database and training items.
"""
from .loaders import (DataError, Dataset, load_arrays, load_cifar10, load_data, load_embedded_fashion_mnist,
                      load_fashion_mnist, read_idx)
from .protocol import RetrievalSplit, protocol_split, retrieval_split

__all__ = ["DataError", "Dataset", "RetrievalSplit", "load_arrays", "load_cifar10", "load_data",
           "load_embedded_fashion_mnist", "load_fashion_mnist", "protocol_split", "read_idx", "retrieval_split"]
