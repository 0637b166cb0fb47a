"""Data sets: the files and formats the command line and the trainer read.

- Fashion-MNIST from its idx files: a directory given by the user, ``$DSCH_FASHION_MNIST``,
  or Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
- The embedded default: the 10,000-image Fashion-MNIST test split shipped inside this
  package (MIT licence in ``dsch_ext/datasets/fashion_mnist/LICENSE``), so a first run needs
  no download.
- CIFAR-10 in its "python batches" format (``data_batch_1..5``, ``test_batch``), read with a
  restricted unpickler that only builds dicts, lists, strings, numbers and numpy arrays.
- Generic arrays: ``.npz`` files with ``images`` (or ``features``) and ``labels``.

Images are returned as uint8 ``[N, C, H, W]`` tensors and labels as int64 ``[N]`` (or
multi-hot ``[N, C]``). Errors name the file and what is wrong with it.
"""
import gzip
import io
import os
import pickle
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from .._fingerprint import fingerprint

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
EMBEDDED_FASHION_MNIST = os.path.join(os.path.dirname(__file__), "fashion_mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


class DataError(ValueError):
    """A data file or directory is missing or not in the expected format."""


@dataclass
class Dataset:
    images: torch.Tensor  # uint8 [N, C, H, W] (or float features [N, D])
    labels: torch.Tensor  # int64 [N] or multi-hot [N, C]
    name: str

    def __len__(self):
        return int(self.labels.shape[0])

    def fingerprint(self) -> str:
        """A content hash of the images and labels (SHA-256 of shapes, dtypes and bytes): what
        a run record keeps to say which data it was trained and evaluated on."""
        return fingerprint(self.images, self.labels)


def read_idx(path: str) -> np.ndarray:
    """An idx file (optionally gzipped): the MNIST family's format."""
    if not os.path.isfile(path):
        raise DataError(f"missing file {path}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file (bad magic {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated (header of a {ndim}-D idx file needs {header} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(f"{path} has {len(data)} bytes, its header {shape} says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _fashion_split(root: str, prefix: str) -> Tuple[np.ndarray, np.ndarray]:
    def find(name):
        for candidate in (name + ".gz", name):
            p = os.path.join(root, candidate)
            if os.path.isfile(p):
                return p
        raise DataError(f"{root} has no {name}[.gz] (expected Fashion-MNIST idx files)")

    images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{root}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def fashion_mnist_root(root: Optional[str] = None) -> Optional[str]:
    """The directory holding the full Fashion-MNIST (the one given, else $DSCH_FASHION_MNIST,
    else Debian's), or None when only the embedded split exists."""
    if root:
        if not os.path.isdir(root):
            raise DataError(f"Fashion-MNIST directory not found: {root}")
        return root
    for candidate in (os.environ.get("DSCH_FASHION_MNIST"), DEBIAN_FASHION_MNIST):
        if candidate and os.path.isdir(candidate):
            return candidate
    return None


def load_fashion_mnist(root: Optional[str] = None, split: str = "all") -> Dataset:
    """Fashion-MNIST as uint8 ``[N, 1, 28, 28]``. ``split``: 'train' (60,000), 'test'
    (10,000) or 'all' (70,000 pooled, the retrieval protocol's source). With no directory
    found, 'test' and 'all' fall back to the embedded 10,000-image test split."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    directory = fashion_mnist_root(root)
    if directory is None:
        if split == "train":
            raise DataError("the Fashion-MNIST training split is not installed (apt-get install dataset-fashion-mnist, "
                            "or pass its directory); only the embedded test split is available")
        return load_embedded_fashion_mnist()
    parts = [_fashion_split(directory, p) for p in {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Dataset(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)),
                   f"fashion-mnist-{split}")


def load_embedded_fashion_mnist() -> Dataset:
    """The 10,000-image Fashion-MNIST test split shipped with dsch_ext."""
    images, labels = _fashion_split(EMBEDDED_FASHION_MNIST, "t10k")
    return Dataset(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)),
                   "fashion-mnist-embedded")


class _SafeUnpickler(pickle.Unpickler):
    """Builds only plain containers and numpy arrays: a CIFAR batch file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _cifar_batch(path: str):
    if not os.path.isfile(path):
        raise DataError(f"missing CIFAR-10 batch file {path}")
    try:
        with open(path, "rb") as f:
            batch = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch (no dict inside)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path} is not a CIFAR-10 python batch (no data/labels)")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels):
        raise DataError(f"{path}: data of shape {data.shape} with {len(labels)} labels; expected [n, 3072]")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10(root: str, split: str = "all") -> Dataset:
    """CIFAR-10 from ``cifar-10-batches-py``: uint8 ``[N, 3, 32, 32]``. split: 'train',
    'test' or 'all' (60,000 pooled)."""
    if not os.path.isdir(root):
        raise DataError(f"CIFAR-10 directory not found: {root}")
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    names["all"] = names["train"] + names["test"]
    if split not in names:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    parts = [_cifar_batch(os.path.join(root, n)) for n in names[split]]
    return Dataset(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                   torch.from_numpy(np.concatenate([p[1] for p in parts])), f"cifar10-{split}")


ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first entry, or an empty archive
MIN_IMAGE_SIDE = 8  # the small CNN pools three times


def check_arrays(x: np.ndarray, y: np.ndarray, key: str, where: str) -> np.ndarray:
    """``x`` as the data set holds it (images ``[N, C, H, W]``, C = 1 or 3; features
    ``[N, D]``), or a DataError naming ``where``, the array and its shape: no items, images
    that are not 2-D pictures of at least 8 x 8 pixels (channels last is named as such),
    features that are not rows of numbers, labels that are not class ids (integers >= 0) or
    multi-hot rows."""
    if x.shape[0] == 0:
        raise DataError(f"{where}: {key} is empty (shape {x.shape})")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: {x.shape[0]} {key} but {y.shape[0]} labels")
    if x.dtype.kind not in "biuf" or x.dtype.kind == "b":
        raise DataError(f"{where}: {key} must be real numbers, got dtype {x.dtype} (shape {x.shape})")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{where}: {key} contain NaN or Inf (shape {x.shape})")
    if key == "images":
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise DataError(f"{where}: images must be [N, H, W] or [N, C, H, W], got shape {x.shape}")
        if x.shape[1] not in (1, 3):
            hint = " (channels last? store x.transpose(0, 3, 1, 2))" if x.shape[-1] in (1, 3) else ""
            raise DataError(f"{where}: images must have 1 or 3 channels, [N, C, H, W], got shape {x.shape}{hint}")
        if min(x.shape[2:]) < MIN_IMAGE_SIDE:
            raise DataError(f"{where}: images of {x.shape[2]} x {x.shape[3]} pixels (shape {x.shape}); the networks "
                            f"need at least {MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE}")
    elif x.ndim != 2 or x.shape[1] == 0:
        raise DataError(f"{where}: features must be 2-D [N, D], got shape {x.shape}")
    if y.ndim == 1:
        if y.dtype.kind not in "iu":
            raise DataError(f"{where}: labels must be integer class ids, got dtype {y.dtype} (shape {y.shape})")
        if int(y.min()) < 0:
            raise DataError(f"{where}: labels must be class ids >= 0, got {int(y.min())}")
    elif y.ndim != 2 or y.dtype.kind not in "biu" or not np.isin(y, (0, 1)).all():
        raise DataError(f"{where}: labels must be class ids [N] or multi-hot rows [N, C] of 0 and 1, got shape "
                        f"{y.shape}")
    return x


def load_arrays(path: str) -> Dataset:
    """An ``.npz`` with ``images`` (uint8 or float, [N, H, W] or [N, C, H, W]) or ``features``
    ([N, D]) and ``labels`` ([N] class ids or [N, C] multi-hot), checked (:func:`check_arrays`)."""
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}")
    with open(path, "rb") as f:
        if not f.read(4).startswith(ZIP_MAGIC):
            raise DataError(f"{path} is not a .npz file (not a zip archive of arrays)")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            key = "images" if "images" in files else "features" if "features" in files else None
            if key is None or "labels" not in files:
                raise DataError(f"{path} needs arrays 'images' or 'features', and 'labels'; it has {sorted(files)}")
            x, y = z[key], z["labels"]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    x = check_arrays(x, y, key, path)
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y).astype(np.int64)),
                   os.path.basename(path))


def load_data(spec: str = "embedded") -> Dataset:
    """A data set from a specification (see the module docstring); ``DataError`` says what is
    missing or malformed."""
    if spec in (None, "", "embedded"):
        return load_embedded_fashion_mnist()
    if spec == "fashion-mnist":
        if fashion_mnist_root() is None:
            raise DataError("full Fashion-MNIST not found: apt-get install dataset-fashion-mnist, set "
                                 "DSCH_FASHION_MNIST, or pass its directory (or use --data embedded)")
        return load_fashion_mnist()
    if os.path.isdir(spec):
        names = os.listdir(spec)
        if any(n.startswith("data_batch_") or n == "test_batch" for n in names):
            return load_cifar10(spec)
        return load_fashion_mnist(spec)
    if os.path.isfile(spec):
        if spec.endswith(".npz"):
            return load_arrays(spec)
        raise DataError(f"{spec}: unknown data file format (use a .npz file or a directory)")
    raise DataError(f"data not found: {spec} (use 'embedded', 'fashion-mnist', a directory or a .npz file)")
