"""Hash networks: a backbone, a linear hash layer and tanh (continuous codes in (-1, 1)).

- ``SmallCNN``: a compact convolutional backbone for small images (Fashion-MNIST 28x28,
  CIFAR-sized 32x32), any channel count.
- ``MLPBackbone``: for precomputed features (e.g. pooled CNN features).
- ``HashNet(backbone, feature_dim, nbits)``: any ``nn.Module`` backbone returning
  ``[B, feature_dim]`` features, followed by ``Linear(feature_dim, nbits)`` and ``tanh``.
  ``encode`` gives packed binary codes (``sign``, dsch_ext.pack_bits) in eval mode.
"""
import torch
from torch import nn

from ..ops import pack_bits


class SmallCNN(nn.Module):
    """Four conv blocks (conv-BN-ReLU, pooling) and global average pooling: [B, C, H, W] -> [B, width * 4]."""

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()

        def block(cin, cout, pool):
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return layers

        self.features = nn.Sequential(
            *block(in_channels, width, True), *block(width, 2 * width, True), *block(2 * width, 4 * width, True),
            *block(4 * width, 4 * width, False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out_dim = 4 * width

    def forward(self, x):
        return self.features(x)


class MLPBackbone(nn.Module):
    """Two hidden layers over precomputed features: [B, in_dim] -> [B, hidden]."""

    def __init__(self, in_dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.out_dim = hidden

    def forward(self, x):
        return self.net(x.flatten(1))


class HashNet(nn.Module):
    """backbone -> Linear(feature_dim, nbits) -> tanh."""

    def __init__(self, backbone: nn.Module, feature_dim: int, nbits: int):
        super().__init__()
        if nbits < 1:
            raise ValueError(f"nbits must be >= 1, got {nbits}")
        self.backbone = backbone
        self.hash = nn.Linear(feature_dim, nbits)
        self.nbits = nbits

    def forward(self, x):
        return torch.tanh(self.hash(self.backbone(x)))

    @torch.no_grad()
    def codes(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Continuous codes of a whole data set in eval mode, in batches (uint8 images are
        scaled to [0, 1])."""
        was_training = self.training
        self.eval()
        try:
            out = []
            device = next(self.parameters()).device
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(device)
                xb = xb.float() / 255.0 if xb.dtype == torch.uint8 else xb.float()
                out.append(self(xb))
            return torch.cat(out)
        finally:
            self.train(was_training)

    def encode(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Packed binary codes (uint8 [N, ceil(nbits / 8)])."""
        return pack_bits(self.codes(x, batch_size))


def small_cnn_hash_net(nbits: int, in_channels: int = 1, width: int = 32) -> HashNet:
    backbone = SmallCNN(in_channels, width)
    return HashNet(backbone, backbone.out_dim, nbits)
