"""Pretrained torchvision backbones: weights from a local file, the input they expect,
frozen stages, model files, and `dsch train --backbone` (random weights saved locally)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

try:  # a torchvision built for another torch fails at import with errors other than ImportError
    import torchvision
except Exception as exc:  # noqa: BLE001
    pytest.skip(f"torchvision is not usable here: {exc}", allow_module_level=True)

from dsch_ext.dsch.backbones import BackboneError, TorchvisionBackbone
from dsch_ext.dsch.trainer import DSCHConfig
from dsch_ext.datasets import loaders as data
from dsch_ext.dsch.model_file import architecture, build_net, load_model, save_model


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


def imagenet_input(x, size):
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet_features_equal_torchvision_on_the_adapted_input(resnet18_file, channels, generator):
    backbone = TorchvisionBackbone("resnet18", resnet18_file, input_size=40).eval()
    reference = torchvision.models.resnet18()
    reference.load_state_dict(torch.load(resnet18_file, weights_only=True))
    reference.fc = torch.nn.Identity()
    x = torch.rand(3, channels, 28, 28, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference.eval()(imagenet_input(x, 40)))
    assert backbone.out_dim == 512


def test_vgg_ends_at_fc7(generator):
    backbone = TorchvisionBackbone("vgg11", None, input_size=32).eval()
    assert backbone.out_dim == 4096 and len(backbone.stages) == 8  # 5 conv blocks, pooling, fc6, fc7
    assert backbone(torch.rand(2, 3, 32, 32, generator=generator)).shape == (2, 4096)


def test_frozen_stages_keep_weights_and_statistics(resnet18_file, generator):
    backbone = TorchvisionBackbone("resnet18", resnet18_file, freeze=2, input_size=32).train()
    frozen = [p for s in backbone.stages[:2] for p in s.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in backbone.stages[2].parameters())
    stem_bn = backbone.stages[0][1]
    before = stem_bn.running_mean.clone()
    backbone(torch.rand(4, 3, 32, 32, generator=generator))
    assert not stem_bn.training and torch.equal(stem_bn.running_mean, before)
    assert backbone.stages[2].training
    everything = TorchvisionBackbone("resnet18", None, freeze=-1, input_size=32)
    assert not any(p.requires_grad for p in everything.parameters())


def test_weights_errors_name_the_file_and_the_architecture(resnet18_file, tmp_path):
    with pytest.raises(BackboneError, match=r"resnet18\.pth does not hold weights of torchvision's resnet34"):
        TorchvisionBackbone("resnet34", resnet18_file)
    with pytest.raises(BackboneError, match="weights file not found"):
        TorchvisionBackbone("resnet18", str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="junk.pth is not a readable weights file"):
        TorchvisionBackbone("resnet18", str(tmp_path / "junk.pth"))
    torch.save({"step": torch.tensor(3)}, tmp_path / "other.pth")
    with pytest.raises(BackboneError, match="2 wrong shape|missing"):
        TorchvisionBackbone("resnet18", str(tmp_path / "other.pth"))
    with pytest.raises(BackboneError, match="unknown backbone 'alexnet'"):
        TorchvisionBackbone("alexnet")
    with pytest.raises(BackboneError, match="freeze must be -1"):
        TorchvisionBackbone("resnet18", freeze=7)


def test_model_file_rebuilds_the_backbone_without_the_weights_file(resnet18_file, tmp_path, generator):
    images = (torch.rand(20, 1, 28, 28, generator=generator) * 255).to(torch.uint8)
    dataset = data.Dataset(images, torch.arange(20) % 2, "tiny")
    spec = {"name": "resnet18", "weights": resnet18_file, "freeze": 1, "input_size": 32}
    net = build_net(dataset, 16, backbone=spec)
    save_model(str(tmp_path / "model.pt"), net, DSCHConfig.fine_tuning(nbits=16), architecture(dataset, 32, 512, spec))
    loaded, config, arch = load_model(str(tmp_path / "model.pt"))
    assert arch == {"kind": "torchvision", "name": "resnet18", "freeze": 1, "input_size": 32}
    assert torch.equal(loaded.codes(images), net.codes(images))
    assert config["lr"] == 5e-4 and config["adam_eps"] == 1.0 and config["component_weight"] == 0.1


def test_fine_tuning_preset_is_the_reference():
    cfg = DSCHConfig.fine_tuning(nbits=32)
    assert (cfg.lr, cfg.adam_eps, cfg.component_weight, cfg.tau, cfg.batch_size, cfg.epochs_per_round) == (5e-4, 1.0, 0.1, 1.0, 15, 1)


def run(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "dsch_ext", *args], capture_output=True, text=True, cwd=tmp_path)


@pytest.mark.slow
def test_train_with_a_backbone_from_the_command_line(resnet18_file, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 60)
    images = (rng.random((240, 20, 20)) * 60 + labels[:, None, None] * 45).astype(np.uint8)
    np.savez(tmp_path / "imgs.npz", images=images, labels=labels)
    tiny = ["--bits", "8", "--rounds", "1", "--m1", "8", "--m2", "2", "--covariance-type", "diag", "--gmm-max-iter",
            "5", "--query-per-class", "5", "--train-per-class", "20", "--input-size", "32"]
    result = run(tmp_path, "train", "--data", "imgs.npz", "--out", "run", "--backbone", "resnet18", "--weights",
                 resnet18_file, "--freeze", "3", *tiny)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["architecture"]["name"] == "resnet18" and record["weights"] == resnet18_file
    assert record["config"]["adam_eps"] == 1.0 and record["config"]["epochs_per_round"] == 1
    result = run(tmp_path, "encode", "--model", "run/model.pt", "--data", "imgs.npz", "--out", "codes.npy")
    assert result.returncode == 0, result.stderr


def test_backbone_command_line_errors_are_one_line(resnet18_file, tmp_path):
    result = run(tmp_path, "train", "--out", "run", "--backbone", "resnet34", "--weights", resnet18_file)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "does not hold weights of torchvision's resnet34" in result.stderr
    result = run(tmp_path, "train", "--out", "run", "--weights", resnet18_file)
    assert result.returncode == 2 and "--weights needs --backbone" in result.stderr
