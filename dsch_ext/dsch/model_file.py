"""Model files: a trained hash network's weights, its architecture and the training
configuration. They load with ``torch.load(weights_only=True)`` (no pickled code) and are
written atomically."""
import dataclasses
import json
import os
from typing import Dict, Optional

import torch

from .._atomic import atomic_write
from .._torch_file import read_torch_file
from ..datasets import Dataset
from .backbones import TorchvisionBackbone
from .networks import HashNet, MLPBackbone, small_cnn_hash_net
from .config import DSCHConfig

MODEL_FORMAT = "dsch_ext.model"
MODEL_VERSION = 1


def build_net(dataset: Dataset, nbits: int, width: int = 32, hidden: int = 512,
              backbone: Optional[Dict] = None) -> HashNet:
    """The small CNN for images, an MLP for feature vectors, or a torchvision backbone
    (``backbone``: ``{"name", "weights", "freeze", "input_size"}``, images only)."""
    x = dataset.images
    if backbone is not None:
        if x.dim() != 4:
            raise ValueError(f"a torchvision backbone needs images; {dataset.name} holds features of shape "
                             f"{tuple(x.shape)}")
        net = TorchvisionBackbone(backbone["name"], backbone.get("weights"), backbone.get("freeze", 0),
                                  backbone.get("input_size", 224))
        return HashNet(net, net.out_dim, nbits)
    if x.dim() == 4:
        return small_cnn_hash_net(nbits, in_channels=x.shape[1], width=width)
    backbone = MLPBackbone(x.shape[1], hidden)
    return HashNet(backbone, backbone.out_dim, nbits)


def architecture(dataset: Dataset, width: int, hidden: int, backbone: Optional[Dict] = None) -> Dict:
    """What ``load_model`` needs to rebuild the network ``build_net`` makes for ``dataset``
    (a torchvision backbone's weights travel in the model file, not the weights file)."""
    x = dataset.images
    if backbone is not None:
        return {"kind": "torchvision", "name": backbone["name"], "freeze": int(backbone.get("freeze", 0)),
                "input_size": int(backbone.get("input_size", 224))}
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
    if os.path.isdir(path):
        raise ValueError(f"model file {path} is a directory")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    state = read_torch_file(path, "dsch_ext model file")
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
    elif arch["kind"] == "torchvision":
        backbone = TorchvisionBackbone(arch["name"], None, arch["freeze"], arch["input_size"])
        net = HashNet(backbone, backbone.out_dim, state["nbits"])
    else:
        backbone = MLPBackbone(arch["in_dim"], arch["hidden"])
        net = HashNet(backbone, backbone.out_dim, state["nbits"])
    net.load_state_dict(state["net"])
    return net.to(device).eval(), state["config"], arch
