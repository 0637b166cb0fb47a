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


def test_presets_and_checked_settings():
    assert augment.AugmentConfig.preset("digits").flip_p == 0.0
    assert augment.AugmentConfig.preset("natural", flip_p=0.2).flip_p == 0.2
    with pytest.raises(ValueError, match="augmentation preset must be one of"):
        augment.AugmentConfig.preset("photos")
    with pytest.raises(ValueError, match="flip_p is a probability"):
        augment.AugmentConfig(flip_p=1.5)
    with pytest.raises(ValueError, match="crop_scale must be"):
        augment.AugmentConfig(crop_scale=(0.9, 0.5))
    images = (torch.rand(4, 1, 12, 12) * 255).to(torch.uint8)
    v1, v2 = augment.TwoViewAugment(augment.AugmentConfig.preset("none"))(images, torch.Generator().manual_seed(0))
    assert torch.allclose(v1, images.float() / 255, atol=1e-5) and torch.allclose(v2, v1)


def test_augmentation_travels_with_the_config():
    import dataclasses

    from dsch_ext.dsch.trainer import DSCHConfig
    from dsch_ext.cli import common, main as cli

    args = cli.build_parser().parse_args(["train", "--out", "r", "--augment", "digits", "--rotation", "5",
                                          "--jitter", "0.1", "--crop-scale", "0.7", "0.9"])
    cfg = common.training_config(args, 16)
    assert (cfg.augment.flip_p, cfg.augment.max_rotation_deg, cfg.augment.brightness) == (0.0, 5.0, 0.1)
    assert cfg.augment.crop_scale == (0.7, 0.9)
    saved = dataclasses.asdict(cfg)  # what the checkpoint, model file and record.json hold
    assert saved["augment"]["flip_p"] == 0.0
    assert DSCHConfig(**saved).augment == cfg.augment
