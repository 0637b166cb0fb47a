"""Two-view augmentation and the hash networks."""
import pytest
import torch

import dsch_ext
from dsch_ext.dsch import augment, networks


def test_two_views_shapes_ranges_and_reproducibility():
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    aug = augment.TwoViewAugment()
    v1, v2 = aug(images, torch.Generator().manual_seed(0))
    assert v1.shape == (6, 1, 28, 28) and v1.dtype == torch.float32
    assert float(v1.min()) >= 0 and float(v1.max()) <= 1
    assert not torch.equal(v1, v2)  # independent views
    w1, w2 = aug(images, torch.Generator().manual_seed(0))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)


def test_identity_config_keeps_images():
    cfg = augment.AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0, max_rotation_deg=0, max_translate=0,
                                brightness=0, contrast=0, noise_std=0, erase_p=0)
    images = torch.rand(3, 3, 32, 32)
    out = augment.TwoViewAugment(cfg).augment(images, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_flip_only_flips():
    cfg = augment.AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=1.0, max_rotation_deg=0, max_translate=0,
                                brightness=0, contrast=0, noise_std=0, erase_p=0)
    images = torch.rand(2, 1, 8, 8)
    out = augment.TwoViewAugment(cfg).augment(images, torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, images.flip(-1), atol=1e-5, rtol=0)


def test_augment_bad_input():
    with pytest.raises(ValueError, match=r"images must be \[B, C, H, W\]"):
        augment.TwoViewAugment().augment(torch.rand(3, 28, 28))


def test_hash_net_codes_and_encode():
    torch.manual_seed(0)
    net = networks.small_cnn_hash_net(nbits=24, in_channels=1, width=8)
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    codes = net.codes(images, batch_size=2)
    assert codes.shape == (5, 24) and float(codes.abs().max()) < 1
    assert net.training  # restored after the eval-mode pass
    packed = net.encode(images)
    assert torch.equal(packed, dsch_ext.pack_bits(codes))
    mlp = networks.HashNet(networks.MLPBackbone(40, 32), 32, 16)
    assert mlp(torch.randn(4, 40)).shape == (4, 16)
    with pytest.raises(ValueError, match="nbits must be >= 1"):
        networks.HashNet(networks.MLPBackbone(4, 8), 8, 0)
