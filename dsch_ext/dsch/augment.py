"""Batched image augmentations on the training device, no torchvision needed.

``TwoViewAugment`` turns a batch of images ``[B, C, H, W]`` (uint8 or float in [0, 1]) into
two independently augmented views, each ``[B, C, H, W]`` float. Every transform is one
batched torch op over the whole batch: a random resized crop, a horizontal flip and a small
rotation/translation folded into ONE affine grid per image (``affine_grid`` +
``grid_sample``), then brightness/contrast jitter, Gaussian noise and random erasing. Random
numbers come from the generator passed in, so views are reproducible.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


PRESETS = {
    # Natural images (photographs, clothing): every transform, horizontal flips included.
    "natural": {},
    # Digits and text: a mirrored 2 or 7 is not a 2 or 7, so no flips, and gentler crops.
    "digits": {"flip_p": 0.0, "crop_scale": (0.8, 1.0)},
    # No augmentation at all: the two views are the image itself (plus nothing).
    "none": {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip_p": 0.0, "max_rotation_deg": 0.0,
             "max_translate": 0.0, "brightness": 0.0, "contrast": 0.0, "noise_std": 0.0, "erase_p": 0.0},
}


@dataclass
class AugmentConfig:
    """The two-view augmentation's settings. ``AugmentConfig.preset(name, **overrides)`` starts
    from a named preset (``natural``, the default; ``digits``: no flips, gentler crops; ``none``)."""

    crop_scale: Tuple[float, float] = (0.6, 1.0)  # area fraction of the random resized crop
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range
    flip_p: float = 0.5  # horizontal flip probability
    max_rotation_deg: float = 10.0
    max_translate: float = 0.1  # fraction of the image size
    brightness: float = 0.3  # multiplicative jitter range 1 +- brightness
    contrast: float = 0.3
    noise_std: float = 0.03
    erase_p: float = 0.25  # probability of erasing one random rectangle
    erase_scale: Tuple[float, float] = (0.02, 0.15)

    @classmethod
    def preset(cls, name: str = "natural", **overrides) -> "AugmentConfig":
        if name not in PRESETS:
            raise ValueError(f"augmentation preset must be one of {sorted(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})

    def __post_init__(self):
        for name in ("crop_scale", "crop_ratio", "erase_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(low, high)}")
            setattr(self, name, (float(low), float(high)))
        if self.crop_scale[1] > 1 or self.erase_scale[1] > 1:
            raise ValueError(f"crop_scale and erase_scale are area fractions <= 1, got {self.crop_scale} and "
                             f"{self.erase_scale}")
        for name in ("flip_p", "erase_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("max_rotation_deg", "max_translate", "brightness", "contrast", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def _uniform(n, low, high, generator, device):
    return torch.rand(n, generator=generator, dtype=torch.float32).to(device) * (high - low) + low


class TwoViewAugment:
    """Callable: ``views(images, generator) -> (view1, view2)``."""

    def __init__(self, config: Optional[AugmentConfig] = None):
        self.config = config or AugmentConfig()

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None):
        return self.augment(images, generator), self.augment(images, generator)

    def augment(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        c = self.config
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        b, device = x.shape[0], x.device
        g = generator
        # Random resized crop + flip + rotation + translation as one affine map per image
        # (grid coordinates in [-1, 1]).
        area = _uniform(b, c.crop_scale[0], c.crop_scale[1], g, device)
        log_ratio = _uniform(b, math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1]), g, device)
        ratio = torch.exp(log_ratio)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = _uniform(b, -1.0, 1.0, g, device) * (1 - sx)
        cy = _uniform(b, -1.0, 1.0, g, device) * (1 - sy)
        cx = cx + _uniform(b, -c.max_translate, c.max_translate, g, device) * 2
        cy = cy + _uniform(b, -c.max_translate, c.max_translate, g, device) * 2
        angle = _uniform(b, -c.max_rotation_deg, c.max_rotation_deg, g, device) * (math.pi / 180)
        flip = torch.where(_uniform(b, 0, 1, g, device) < c.flip_p, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([cos * sx * flip, -sin * sy, cx], dim=1),
            torch.stack([sin * sx * flip, cos * sy, cy], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # Photometric jitter and noise.
        bright = _uniform(b, 1 - c.brightness, 1 + c.brightness, g, device).view(b, 1, 1, 1)
        contrast = _uniform(b, 1 - c.contrast, 1 + c.contrast, g, device).view(b, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean) * bright
        if c.noise_std > 0:
            noise = torch.randn(x.shape, generator=g, dtype=torch.float32).to(device)
            x = x + c.noise_std * noise
        x = x.clamp(0.0, 1.0)
        # Random erasing: one rectangle per selected image, as a mask.
        if c.erase_p > 0:
            h, w = x.shape[-2:]
            erase = _uniform(b, 0, 1, g, device) < c.erase_p
            ea = _uniform(b, c.erase_scale[0], c.erase_scale[1], g, device)
            eh = (torch.sqrt(ea) * h).clamp(min=1)
            ew = (torch.sqrt(ea) * w).clamp(min=1)
            ey = _uniform(b, 0, 1, g, device) * (h - eh)
            ex = _uniform(b, 0, 1, g, device) * (w - ew)
            rows = torch.arange(h, device=device).view(1, h, 1)
            cols = torch.arange(w, device=device).view(1, 1, w)
            inside = ((rows >= ey.view(b, 1, 1)) & (rows < (ey + eh).view(b, 1, 1))
                      & (cols >= ex.view(b, 1, 1)) & (cols < (ex + ew).view(b, 1, 1)) & erase.view(b, 1, 1))
            x = x.masked_fill(inside[:, None], 0.0)
        return x
