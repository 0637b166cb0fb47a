"""What the ``dsch`` commands share: data, settings, models and outputs, each checked so that a
user's mistake is one :class:`~dsch_ext.cli.errors.CliError` line.

Outputs are all-or-nothing: a command computes everything first and then writes each file
atomically (:func:`write_outputs`), so a failure leaves the output location as it found it.
"""
import json
import os
import sys
from typing import Dict, Optional

import torch

from .. import datasets, distributed
from .._atomic import atomic_write
from ..distributed.comm import LocalCommunicator
from ..dsch.augment import AugmentConfig
from ..dsch.backbones import BackboneError, TorchvisionBackbone
from ..dsch.config import DSCHConfig
from ..dsch.model_file import load_model
from ..dsch.reports import results_png
from .errors import CliError


def load_dataset(spec):
    try:
        return datasets.load_data(spec)
    except datasets.DataError as exc:
        raise CliError(str(exc)) from exc


def split_of(dataset, query_per_class=100, train_per_class=500, split_seed=0):
    try:
        return datasets.protocol_split(dataset, query_per_class, train_per_class, split_seed)
    except datasets.DataError as exc:
        raise CliError(f"{dataset.name}: {exc}") from exc


def _augment(args):
    overrides = {k: getattr(args, k) for k in ("flip_p", "crop_scale", "max_rotation_deg", "erase_p")
                 if getattr(args, k, None) is not None}
    if getattr(args, "jitter", None) is not None:
        overrides.update(brightness=args.jitter, contrast=args.jitter)
    try:
        return AugmentConfig.preset(getattr(args, "augment", "natural"), **overrides)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def training_config(args, nbits, baseline=False) -> DSCHConfig:
    """From scratch by default; the reference fine-tuning settings with --backbone."""
    names = ("m1", "m2", "covariance_type", "gmm_max_iter", "component_weight", "tau", "batch_size", "lr", "adam_eps",
             "rounds", "epochs_per_round", "seed")
    fields = {f: getattr(args, f) for f in names if getattr(args, f, None) is not None}
    preset = DSCHConfig.fine_tuning if getattr(args, "backbone", None) else DSCHConfig.from_scratch
    try:
        return preset(nbits=nbits, baseline=baseline or args.baseline, augment=_augment(args), **fields)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def backbone_spec(args) -> Optional[Dict]:
    """The --backbone settings, checked (the architecture is built once to check the weights)."""
    if not getattr(args, "backbone", None):
        for flag in ("weights", "freeze"):
            if getattr(args, flag, None) is not None:
                raise CliError(f"--{flag} needs --backbone")
        return None
    spec = {"name": args.backbone, "weights": args.weights, "freeze": args.freeze or 0, "input_size": args.input_size}
    try:
        TorchvisionBackbone(**spec)
    except BackboneError as exc:
        raise CliError(str(exc)) from exc
    if args.weights is None:
        print(f"no --weights: {args.backbone} starts from random weights", file=sys.stderr, flush=True)
    return spec


def communicator(args):
    if not getattr(args, "distributed", False):
        return LocalCommunicator()
    # The process group's backend follows the training device: gloo for CPU training even
    # where a GPU is visible (NCCL cannot reduce CPU tensors), NCCL for CUDA, each rank on
    # GPU LOCAL_RANK.
    on_cuda = torch.device(args.device).type == "cuda"
    if on_cuda and torch.device(args.device).index is None:
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        return distributed.init(backend="nccl" if on_cuda else "gloo", timeout=args.timeout)
    except distributed.DistributedError as exc:
        raise CliError(str(exc)) from exc


def model_for(path, dataset, data_spec, device="cpu"):
    """A model file that can encode ``dataset``: (net, config, architecture)."""
    try:
        net, config, arch = load_model(path, device=device)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if arch["kind"] in ("small_cnn", "torchvision") and dataset.images.dim() != 4:
        raise CliError(f"{path} is an image model but {data_spec} holds features of shape "
                       f"{tuple(dataset.images.shape)}")
    if arch["kind"] == "small_cnn" and dataset.images.shape[1] != arch["in_channels"]:
        raise CliError(f"{path} takes images of {arch['in_channels']} channel(s) but {data_spec} holds images of "
                       f"shape {tuple(dataset.images.shape[1:])}")
    if arch["kind"] == "mlp" and (dataset.images.dim() != 2 or dataset.images.shape[1] != arch["in_dim"]):
        raise CliError(f"{path} takes {arch['in_dim']} features but {data_spec} holds items of shape "
                       f"{tuple(dataset.images.shape[1:])}")
    return net, config, arch


def json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, default=float) + "\n").encode()


def plot_bytes(records, title: str) -> Optional[bytes]:
    """The results plot as PNG bytes, or None (with a note) without matplotlib."""
    try:
        return results_png(records, title)
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install matplotlib)", file=sys.stderr)
        return None


def write_outputs(directory: str, files: Dict[str, Optional[bytes]]) -> None:
    """Write ``files`` (name: bytes; None is skipped) into ``directory`` (made if missing),
    each atomically; an unwritable location is one CliError naming it, and a directory this
    call made is removed again."""
    created = not os.path.exists(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        for name, data in files.items():
            if data is not None:
                atomic_write(os.path.join(directory, name), lambda f, d=data: f.write(d))
    except OSError as exc:
        if created:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)
        raise CliError(f"cannot write {exc.filename or directory}: {exc.strerror or exc}") from exc
    for name, data in files.items():
        if data is not None:
            print(f"wrote {os.path.join(directory, name)}")


def write_file(what: str, path: str, write) -> None:
    """``write(path)`` for one output file (written atomically by ``write``); an unwritable
    path is one CliError naming it."""
    try:
        write(path)
    except OSError as exc:
        raise CliError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc
