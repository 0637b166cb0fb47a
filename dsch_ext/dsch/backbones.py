"""Pretrained torchvision backbones for the hash network (the optional ``vision`` extra).

``torchvision_backbone(name, weights=path)`` builds a torchvision classification network
without its last layer, loads ImageNet (or any) weights from a local file (nothing is
downloaded), and puts in front of it the input its weights expect: images in [0, 1] resized
to ``input_size`` pixels, grey images repeated to three channels, ImageNet's mean and
standard deviation. What comes out is what the paper hashes: VGG's fc7 (4096 features),
ResNet's pooled features (512 or 2048). ``freeze`` keeps the first stages fixed (their
weights and, for batch norm, their running statistics).
"""
import os
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .._torch_file import read_torch_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_NAMES = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
RESNET_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BACKBONE_NAMES = VGG_NAMES + RESNET_NAMES


class BackboneError(ValueError):
    """A backbone that cannot be built: unknown name, missing torchvision, unusable weights."""


def _torchvision_models():
    try:
        import torchvision.models as models
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise BackboneError(f"pretrained backbones need torchvision ({type(exc).__name__}: {exc}); "
                            "install it with pip install 'dsch_ext[vision]'") from exc
    return models


class ImageNetInput(nn.Module):
    """[B, 1 or 3, H, W] images in [0, 1] -> [B, 3, size, size], ImageNet-normalised."""

    def __init__(self, size: int = 224):
        super().__init__()
        if size < 16:
            raise BackboneError(f"input_size must be >= 16 pixels, got {size}")
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"a torchvision backbone takes images [B, 1 or 3, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


class TorchvisionBackbone(nn.Module):
    """A torchvision VGG or ResNet as a feature extractor: [B, C, H, W] -> [B, out_dim]."""

    def __init__(self, name: str, weights: Optional[str] = None, freeze: int = 0, input_size: int = 224):
        super().__init__()
        if name not in BACKBONE_NAMES:
            raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
        # A weights file is read before torchvision is needed, so a bad file is named as such
        # wherever torchvision is missing too.
        state = read_weights(weights, name) if weights is not None else None
        model = _torchvision_models().get_model(name, weights=None)
        if state is not None:
            load_weights(model, name, weights, state)
        self.name = name
        self.input = ImageNetInput(input_size)
        if name.startswith("vgg"):
            # fc7: the classifier without its last Linear (fc8), as the paper hashes.
            self.stages = nn.ModuleList([*_vgg_blocks(model.features), nn.Sequential(model.avgpool, nn.Flatten()),
                                         model.classifier[:3], model.classifier[3:6]])
            self.out_dim = model.classifier[6].in_features
        else:
            stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
            self.stages = nn.ModuleList([stem, model.layer1, model.layer2, model.layer3, model.layer4,
                                         nn.Sequential(model.avgpool, nn.Flatten())])
            self.out_dim = model.fc.in_features
        self.frozen = _check_freeze(freeze, len(self.stages))
        for stage in self.stages[: self.frozen]:
            stage.requires_grad_(False)

    def forward(self, x):
        x = self.input(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def train(self, mode: bool = True):
        """Frozen stages stay in eval mode: their batch-norm statistics do not move either."""
        super().train(mode)
        for stage in self.stages[: self.frozen]:
            stage.eval()
        return self


def _vgg_blocks(features: nn.Sequential) -> List[nn.Sequential]:
    """VGG's convolutions split after each max-pooling: its five blocks."""
    blocks, current = [], []
    for layer in features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*current))
            current = []
    if current:
        blocks.append(nn.Sequential(*current))
    return blocks


def _check_freeze(freeze: int, stages: int) -> int:
    """freeze = -1: every stage; 0..stages: the first ``freeze``."""
    if freeze == -1:
        return stages
    if not 0 <= freeze <= stages:
        raise BackboneError(f"freeze must be -1 (all) or 0..{stages} (the backbone's stages), got {freeze}")
    return freeze


def read_weights(path: str, name: str) -> Dict[str, torch.Tensor]:
    """The state dict in ``path`` (``torch.save(model.state_dict())``, torchvision's ``.pth``
    files, or a dict holding one under ``state_dict`` / ``model``) for torchvision's ``name``."""
    if not os.path.isfile(path):
        raise BackboneError(f"weights file not found: {path}")
    state = read_torch_file(path, "weights file", BackboneError)
    if isinstance(state, dict) and not _is_state_dict(state):
        state = state.get("state_dict", state.get("model", state))
    if not _is_state_dict(state):
        raise BackboneError(f"{path} holds no state dict (a dict of tensors) for {name}")
    return state


def load_weights(model: nn.Module, name: str, path: str, state: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Load the weights in ``path`` (:func:`read_weights`; ``state`` if already read) into
    ``model``, torchvision's ``name``; every key and shape must match."""
    state = read_weights(path, name) if state is None else state
    problems = _mismatches(model.state_dict(), state)
    if problems:
        raise BackboneError(f"{path} does not hold weights of torchvision's {name}: {problems}")
    model.load_state_dict(state)


def _is_state_dict(state) -> bool:
    return isinstance(state, dict) and bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def _mismatches(want: Dict[str, torch.Tensor], got: Dict[str, torch.Tensor]) -> str:
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [f"{k} {tuple(got[k].shape)} instead of {tuple(v.shape)}" for k, v in want.items()
              if k in got and got[k].shape != v.shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            parts.append(f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
    return "; ".join(parts)
