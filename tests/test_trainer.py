"""The DSCH training loop on tiny synthetic data: it runs, learns, selects, checkpoints, resumes."""
import numpy as np
import pytest
import torch

from dsch_ext import evaluation
from dsch_ext.dsch import networks
from dsch_ext.dsch.trainer import DSCHConfig, DSCHTrainer


def tiny_images(n=240, classes=3, seed=0):
    """Class = which quadrant holds a bright blob (plus noise): learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.rand(n, 1, 16, 16, generator=g) * 0.2
    for c in range(classes):
        r, col = divmod(c, 2)
        images[labels == c, :, r * 8 : r * 8 + 8, col * 8 : col * 8 + 8] += 0.7
    return (images.clamp(0, 1) * 255).to(torch.uint8), labels


def config(**kw):
    base = dict(nbits=16, m1=12, m2=3, covariance_type="diag", gmm_max_iter=20, batch_size=24, lr=3e-3,
                adam_eps=1e-8, rounds=2, tau=0.5, val_fraction=0.2, val_map_k=20, seed=0)
    base.update(kw)
    return DSCHConfig(**base)


def test_trains_selects_and_encodes(tmp_path):
    torch.manual_seed(0)
    images, labels = tiny_images()
    net = networks.small_cnn_hash_net(16, in_channels=1, width=8)
    trainer = DSCHTrainer(net, config(), checkpoint=str(tmp_path / "ckpt.pt"), verbose=0)
    history = trainer.fit(images, labels)
    assert len(history.rounds) == 2 and history.best_round in (0, 1)
    for r in history.rounds:
        assert np.isfinite(r.loss) and r.parts["ccf"] > 0 and r.val_map is not None
    codes = trainer.encode(images)
    assert codes.shape == (240, 2) and codes.dtype == torch.uint8
    score = evaluation.mean_average_precision(codes[:30], codes[30:], labels[:30], labels[30:], k=50)
    assert score > 0.5  # 3 classes: random ranking gives ~0.33


@pytest.mark.parametrize("content", [b"not a checkpoint", "tensor", "model-like dict"])
def test_resume_from_an_unusable_checkpoint_is_one_clear_error(tmp_path, content):
    images, labels = tiny_images(seed=1)
    path = tmp_path / "ckpt.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "model-like dict":
        torch.save({"format": "dsch_ext-model", "net": {}}, path)
    else:
        path.write_bytes(content)
    trainer = DSCHTrainer(networks.small_cnn_hash_net(16, 1, 8), config(rounds=1), checkpoint=str(path), verbose=0)
    with pytest.raises(ValueError, match="ckpt.pt is not a (readable training checkpoint|dsch_ext training checkpoint)"):
        trainer.fit(images, labels, resume=True)


def test_resume_continues_from_checkpoint(tmp_path):
    images, labels = tiny_images(seed=1)
    path = str(tmp_path / "ckpt.pt")
    torch.manual_seed(0)
    first = DSCHTrainer(networks.small_cnn_hash_net(16, 1, 8), config(rounds=1), checkpoint=path, verbose=0)
    first.fit(images, labels)
    torch.manual_seed(0)
    second = DSCHTrainer(networks.small_cnn_hash_net(16, 1, 8), config(rounds=2), checkpoint=path, verbose=0)
    history = second.fit(images, labels, resume=True)
    assert [r.round for r in history.rounds] == [0, 1]
    # The resumed run's time counts its first round, done by the first trainer.
    assert all(r.seconds > 0 for r in history.rounds)
    assert second.train_seconds >= sum(r.seconds for r in history.rounds)
    assert history.rounds[0].seconds == first.history.rounds[0].seconds
    # One round, then a resumed round, is two rounds straight through: same weights, same history.
    torch.manual_seed(0)
    straight = DSCHTrainer(networks.small_cnn_hash_net(16, 1, 8), config(rounds=2), verbose=0)
    straight_history = straight.fit(images, labels)
    assert [r.loss for r in history.rounds] == [r.loss for r in straight_history.rounds]
    assert history.best_round == straight_history.best_round
    for name, value in straight.net.state_dict().items():
        assert torch.equal(second.net.state_dict()[name], value), name
    wrong = DSCHTrainer(networks.small_cnn_hash_net(8, 1, 8), config(nbits=8, rounds=3), checkpoint=path, verbose=0)
    with pytest.raises(ValueError, match="is for 16-bit codes, this run trains 8-bit codes"):
        wrong.fit(images, labels, resume=True)


def test_progress_lines_give_the_time_left(capsys):
    images, labels = tiny_images(seed=2)
    torch.manual_seed(0)
    DSCHTrainer(networks.small_cnn_hash_net(16, 1, 8), config(rounds=3), verbose=1).fit(images, labels)
    out = capsys.readouterr().out
    assert "Initialization" not in out  # the mixture's own lines only at verbose=2
    lines = [line for line in out.splitlines() if line.startswith("round ")]
    assert len(lines) == 3
    # From the first round alone (k-means start, many EM iterations) the estimate is a bound.
    assert ", at most about " in lines[0] and lines[0].endswith(" left")
    assert ", about " in lines[1] and "at most" not in lines[1] and lines[1].endswith(" left")
    assert "left" not in lines[2]


def test_verbose_2_adds_the_mixtures_lines(capsys):
    images, labels = tiny_images(seed=2)
    DSCHTrainer(networks.small_cnn_hash_net(16, 1, 8), config(rounds=1), verbose=2).fit(images, labels)
    out = capsys.readouterr().out
    assert "Initialization 0" in out and out.count("round 1/1") == 1


def test_baseline_mode_has_no_component_terms():
    images, labels = tiny_images(n=120, seed=2)
    torch.manual_seed(0)
    trainer = DSCHTrainer(networks.small_cnn_hash_net(16, 1, 8), config(baseline=True, rounds=1), verbose=0)
    history = trainer.fit(images, labels)
    assert history.rounds[0].parts["ccf"] == 0 and history.rounds[0].parts["ccc"] == 0


def test_feature_inputs_with_mlp_head():
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(150) % 3
    feats = torch.randn(3, 20, generator=g)[labels] * 3 + torch.randn(150, 20, generator=g)
    torch.manual_seed(0)
    net = networks.HashNet(networks.MLPBackbone(20, 32), 32, 16)
    history = DSCHTrainer(net, config(rounds=1), verbose=0).fit(feats, labels)
    assert np.isfinite(history.rounds[0].loss)


def test_the_trainer_runs_on_torchs_thread_setting_and_records_it():
    images, labels = tiny_images(n=90, seed=4)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = DSCHTrainer(networks.small_cnn_hash_net(16, 1, 8), config(rounds=1), verbose=0).fit(images, labels)
        assert history.rounds[0].mstep_threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_configs_read_back_with_their_older_names():
    from dsch_ext.dsch.config import DSCHConfig

    old = {"nbits": 16, "lam": 0.5, "mstep_threads": 2, "augment": {"crop_scale": [0.7, 0.9]}}
    cfg = DSCHConfig.from_dict(old)
    assert cfg.component_weight == 0.5 and cfg.augment.crop_scale == (0.7, 0.9)
    with pytest.raises(ValueError, match="unknown DSCH settings \\['colour'\\]"):
        DSCHConfig.from_dict({"colour": 1})


def test_resume_refuses_other_data_and_a_missing_checkpoint(tmp_path):
    images, labels = tiny_images(n=90, seed=5)
    path = str(tmp_path / "ckpt.pt")
    DSCHTrainer(networks.small_cnn_hash_net(16, 1, 8), config(rounds=1), checkpoint=path, verbose=0).fit(images, labels)
    other_images, other_labels = tiny_images(n=90, seed=6)
    again = DSCHTrainer(networks.small_cnn_hash_net(16, 1, 8), config(rounds=2), checkpoint=path, verbose=0)
    with pytest.raises(ValueError, match="was trained on other training data"):
        again.fit(other_images, other_labels, resume=True)
    with pytest.raises(ValueError, match="was trained on other training data"):
        again.fit(images[:60], labels[:60], resume=True)
    nowhere = DSCHTrainer(networks.small_cnn_hash_net(16, 1, 8), config(rounds=2),
                          checkpoint=str(tmp_path / "none.pt"), verbose=0)
    with pytest.raises(FileNotFoundError, match="no training checkpoint to resume"):
        nowhere.fit(images, labels, resume=True)


@pytest.mark.parametrize("field, value, message", [
    ("rounds", 0, "rounds must be an int >= 1"), ("rounds", -1, "rounds must be an int >= 1"),
    ("batch_size", 1, "batch_size must be an int >= 2"), ("tau", 0.0, "tau must be > 0"),
    ("nbits", 0, "nbits must be an int >= 1"), ("covariance_type", "banded", "covariance_type must be"),
])
def test_settings_no_training_can_run_with_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        config(**{field: value})
