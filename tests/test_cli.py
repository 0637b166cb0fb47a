"""The `dsch` command line: train / encode / eval (one process and under torchrun), the search
demo and info, and its one-line errors (the index commands are tested in test_index.py)."""
import json
import subprocess
import sys

import pytest


def run(tmp_path, *args):
    # From outside the repository, so the installed package is imported.
    return subprocess.run([sys.executable, "-m", "dsch_ext", *args], capture_output=True, text=True, cwd=tmp_path)


def test_search_demo_runs_and_matches_brute_force(tmp_path):
    result = run(tmp_path, "search-demo", "--database", "5000", "--queries", "20", "-k", "50", "--bits", "32")
    assert result.returncode == 0, result.stderr
    assert "identical to brute force on 20 queries (distances, indices, ties): True" in result.stdout


def test_info_reports_the_build(tmp_path):
    result = run(tmp_path, "info")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["source"] == "dsch_ext._C" and "torch" in info


def features_npz(path, n=240, d=16, classes=4, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * 3
    labels = np.repeat(np.arange(classes), n // classes)
    features = (centers[labels] + rng.normal(size=(n, d))).astype(np.float32)
    np.savez(path, features=features, labels=labels)
    return str(path)


TINY = ["--bits", "8", "--rounds", "2", "--epochs-per-round", "1", "--m1", "8", "--m2", "2", "--covariance-type",
        "diag", "--gmm-max-iter", "5", "--query-per-class", "5", "--train-per-class", "30", "--batch-size", "16"]


@pytest.mark.slow
def test_train_encode_eval_round_trip(tmp_path):
    data = features_npz(tmp_path / "feats.npz")
    result = run(tmp_path, "train", "--data", data, "--out", "run", *TINY)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["method"] == "dsch" and record["nbits"] == 8 and record["ranks"] == 1
    assert len(record["history"]["rounds"]) == 2 and record["estep_seconds"] > 0
    assert 0 < record["metrics"]["mAP@1000"] <= 1 and len(record["pr_curve"]["precision"]) == 9
    # Resume from the checkpoint with another code length: a clear error.
    result = run(tmp_path, "train", "--data", data, "--out", "run", "--resume", "--bits", "16",
                 *TINY[2:])
    assert result.returncode == 2 and "8-bit codes" in result.stderr
    result = run(tmp_path, "encode", "--model", "run/model.pt", "--data", data, "--out", "codes.npy")
    assert result.returncode == 0, result.stderr
    import numpy as np

    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (240, 1) and codes.dtype == np.uint8
    result = run(tmp_path, "eval", "--model", "run/model.pt", "--baselines", "itq", "lsh", "--bits", "8",
                 "--data", data, "--query-per-class", "5", "--train-per-class", "30", "--out", "ev")
    assert result.returncode == 0, result.stderr
    assert "| dsch |" in result.stdout and "| itq |" in result.stdout
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert {r["method"] for r in report["records"]} == {"dsch", "itq", "lsh"}
    assert (tmp_path / "ev" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run(tmp_path, "components", "--model", "run/model.pt", "--data", data, "--query-per-class", "5",
                 "--train-per-class", "30", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout[result.stdout.index("{"):])
    assert stats["points"] == 120 and stats["m1"] == 8 and 0 < stats["purity"] <= 1
    assert stats["cooccurring_pairs_per_batch"] >= 0 and stats["batch_size"] == 16
    # A feature model cannot encode images: one line, before any work.
    result = run(tmp_path, "components", "--model", "run/model.pt", "--data", "embedded")
    assert result.returncode == 2 and "takes 16 features" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_errors_are_one_line(tmp_path):
    result = run(tmp_path, "train", "--data", str(tmp_path / "nowhere"), "--out", "run")
    assert result.returncode == 2 and "data not found" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    result = run(tmp_path, "train", "--data", str(tmp_path / "bad.npz"), "--out", "run")
    assert result.returncode == 2 and "is not a .npz file" in result.stderr
    (tmp_path / "model.pt").write_bytes(b"garbage")
    result = run(tmp_path, "encode", "--model", "model.pt", "--out", "c.npy")
    assert result.returncode == 2 and "not a readable dsch_ext model file" in result.stderr


@pytest.mark.slow
def test_torchrun_launches_distributed_training(tmp_path):
    data = features_npz(tmp_path / "feats.npz")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dsch_ext",
           "train", "--distributed", "--timeout", "60", "--data", data, "--out", "run", *TINY]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["ranks"] == 2 and 0 < record["metrics"]["mAP@1000"] <= 1
    assert result.stdout.count("trained in") == 1  # rank 0 reports


@pytest.mark.slow
def test_results_command_writes_the_report(tmp_path):
    data = features_npz(tmp_path / "feats.npz")
    args = TINY[: TINY.index("--query-per-class")] + ["--batch-size", "16"]
    result = run(tmp_path, "results", "--data", data, "--ablation-bits", "8", "--estep-iterations", "1", "--out", "res",
                 *args)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "res" / "tables.md").read_text()
    for needle in ("| itq |", "| dsch |", "| contrastive |", "without fine components", "E-step against scikit-learn", "speed-up"):
        assert needle in text, needle
    assert (tmp_path / "res" / "results.png").stat().st_size > 1000
    # A second call reuses every finished run (no training: fast, same numbers).
    again = run(tmp_path, "results", "--data", data, "--ablation-bits", "8", "--estep-iterations", "1", "--out", "res",
                *args)
    assert again.returncode == 0 and "===" not in again.stdout
    assert (tmp_path / "res" / "tables.md").read_text() == text
    # More seeds: only the new seed's runs train; cells become mean ± sd with paired differences.
    seeds = run(tmp_path, "results", "--data", data, "--ablation-bits", "8", "--estep-iterations", "1", "--out", "res",
                "--seeds", "0", "1", *args)
    assert seeds.returncode == 0, seeds.stderr[-3000:]
    trained = [line for line in seeds.stdout.splitlines() if line.startswith("===")]
    assert "=== dsch, 8 bits, seed 1" in trained and all(line.endswith("seed 1") for line in trained)
    assert (tmp_path / "res" / "dsch-8-seed1" / "record.json").exists()
    text = (tmp_path / "res" / "tables.md").read_text()
    ours = [json.loads((tmp_path / "res" / d / "record.json").read_text())["metrics"]["mAP@1000"]
            for d in ("dsch-8", "dsch-8-seed1")]
    mean = sum(ours) / 2
    sd = abs(ours[0] - ours[1]) / 2 ** 0.5
    assert f"{mean:.4f} ± {sd:.4f}" in text
    theirs = [json.loads((tmp_path / "res" / d / "record.json").read_text())["metrics"]["mAP@1000"]
              for d in ("itq-8", "itq-8-seed1")]
    diffs = [100 * (a - b) for a, b in zip(ours, theirs)]
    assert f"| 8 | itq | {diffs[0]:+.1f} | {diffs[1]:+.1f} | **{sum(diffs) / 2:+.1f}** |" in text
    # A run directory holding another seed's run is an error, not silently mixed in.
    path = tmp_path / "res" / "lsh-8" / "record.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "seed": 5}))
    wrong = run(tmp_path, "results", "--data", data, "--ablation-bits", "8", "--estep-iterations", "1", "--out", "res",
                *args)
    assert wrong.returncode != 0 and "seed 5, not 0" in wrong.stderr


@pytest.mark.slow
def test_results_on_a_larger_training_set_without_ablation_or_estep(tmp_path):
    data = features_npz(tmp_path / "feats.npz")
    args = TINY[: TINY.index("--query-per-class")] + ["--batch-size", "16", "--ablation-bits", "0",
                                                       "--estep-iterations", "0", "--out", "res"]
    result = run(tmp_path, "results", "--data", data, "--train-per-class", "20", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "res" / "tables.md").read_text()
    assert "80 training images (20 a class" in text and "| dsch |" in text
    assert "Ablation" not in text and "E1" not in text
    for run_dir in ("dsch-8", "contrastive-8", "itq-8"):
        record = json.loads((tmp_path / "res" / run_dir / "record.json").read_text())
        assert record["data"]["train"] == 80, run_dir
    # Runs trained on another number of images are not mixed into the tables.
    other = run(tmp_path, "results", "--data", data, "--train-per-class", "30", *args)
    assert other.returncode == 2 and "trained on 80 images, not 120" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    # ... nor are runs trained with other settings.
    path = tmp_path / "res" / "dsch-8" / "record.json"
    record = json.loads(path.read_text())
    record["config"]["epochs_per_round"] = 3
    path.write_text(json.dumps(record))
    changed = run(tmp_path, "results", "--data", data, "--train-per-class", "20", *args)
    assert changed.returncode == 2 and "epochs_per_round=3 (this call: 1)" in changed.stderr, changed.stderr
    negative = run(tmp_path, "results", "--data", data, "--ablation-bits", "-1", "--out", "res")
    assert negative.returncode == 2 and "ablation_bits and estep_iterations must be >= 0" in negative.stderr
    # ... nor runs of another data set, even one under the same file name.
    record["config"]["epochs_per_round"] = 1
    path.write_text(json.dumps(record))
    features_npz(tmp_path / "feats.npz", seed=1)
    mixed = run(tmp_path, "results", "--data", data, "--train-per-class", "20", *args)
    assert mixed.returncode == 2 and "holds a run of other data" in mixed.stderr, mixed.stderr
    embedded = run(tmp_path, "results", "--data", "embedded", "--train-per-class", "20", *args)
    assert embedded.returncode == 2 and "holds a run of other data (feats.npz" in embedded.stderr, embedded.stderr


def test_results_checks_its_optional_dependencies_before_training(tmp_path, monkeypatch, capsys):
    import importlib.util

    from dsch_ext.cli import main as cli

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else
                        real_find_spec(name, *a))
    code = cli.main(["results", "--data", str(tmp_path / "not-read"), "--out", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert code == 2 and "needs matplotlib" in err and "dsch_ext[results]" in err
    assert not (tmp_path / "res").exists()


@pytest.mark.slow
def test_demo_prints_the_table(tmp_path):
    data = features_npz(tmp_path / "feats.npz")
    args = TINY[: TINY.index("--query-per-class")]
    result = run(tmp_path, "demo", "--data", data, "--contrastive", "--out", "demo", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    for method in ("lsh", "pcah", "itq", "contrastive", "dsch"):
        assert f"| {method} |" in result.stdout
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["records"][-1]["method"] == "dsch"


@pytest.mark.slow
def test_resume_continues_only_the_run_it_saved(tmp_path):
    data = features_npz(tmp_path / "feats.npz")
    first = run(tmp_path, "train", "--data", data, "--out", "run", *TINY, "--no-eval")
    assert first.returncode == 0, first.stderr
    again = run(tmp_path, "train", "--data", data, "--out", "run", "--resume", *TINY[:2], "--rounds", "3", *TINY[4:],
                "--no-eval")
    assert again.returncode == 0, again.stderr  # the same data and split: it continues
    other = features_npz(tmp_path / "other.npz", seed=3)
    for argv in (["--data", other], ["--data", data, "--train-per-class", "20"]):
        result = run(tmp_path, "train", "--out", "run", "--resume", *TINY, *argv, "--no-eval")
        assert result.returncode == 2 and "was trained on other training data" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["data"]["name"] == "feats.npz" and len(record["history"]["rounds"]) == 3


@pytest.mark.slow
def test_encode_writes_what_the_suffix_says_and_components_json_is_json(tmp_path):
    import numpy as np

    import dsch_ext

    data = features_npz(tmp_path / "feats.npz")
    assert run(tmp_path, "train", "--data", data, "--out", "run", *TINY, "--no-eval").returncode == 0
    for out, kind in (("c.npz", "npz"), ("C.NPY", "npy"), ("i.DBIX", "index")):
        result = run(tmp_path, "encode", "--model", "run/model.pt", "--data", data, "--out", out)
        assert result.returncode == 0, result.stderr
        if kind == "npz":
            assert np.load(tmp_path / out)["codes"].shape == (240, 1)
        elif kind == "npy":
            assert np.load(tmp_path / out).shape == (240, 1)
        else:
            assert len(dsch_ext.BinaryIndex.load(tmp_path / out)) == 240
    result = run(tmp_path, "components", "--model", "run/model.pt", "--data", data, "--json", "--query-per-class", "5",
                 "--train-per-class", "30")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["points"] > 0  # standard output is the JSON alone


@pytest.mark.slow
def test_failed_commands_leave_the_output_location_as_they_found_it(tmp_path):
    data = features_npz(tmp_path / "feats.npz")
    # An evaluation that fails (a baseline it cannot fit): no eval directory either.
    result = run(tmp_path, "eval", "--data", data, "--baselines", "lsh", "itq", "--bits", "8", "17", "--out", "ev",
                 "--query-per-class", "5", "--train-per-class", "30")
    assert result.returncode == 2 and "exceeds the number of features 16" in result.stderr
    assert not (tmp_path / "ev").exists()
    # A search whose output cannot be finished leaves an existing output file as it was.
    import numpy as np

    import dsch_ext

    index = dsch_ext.BinaryIndex(16)
    index.add(np.random.default_rng(0).standard_normal((50, 16)))
    index.save(tmp_path / "c.dbix")
    (tmp_path / "res.csv").write_text("an earlier result\n")
    np.save(tmp_path / "q.npy", np.random.default_rng(1).standard_normal((3, 16)))
    result = run(tmp_path, "search", "--index", "c.dbix", "--queries", "q.npy", "-k", "99", "--format", "csv",
                 "--out", "res.csv")
    assert result.returncode == 2 and (tmp_path / "res.csv").read_text() == "an earlier result\n"
    result = run(tmp_path, "search", "--index", "c.dbix", "--queries", "q.npy", "-k", "3", "--format", "csv",
                 "--out", "res.csv")
    assert result.returncode == 0 and len((tmp_path / "res.csv").read_text().splitlines()) == 10


def test_a_run_that_fails_before_its_first_round_leaves_no_directory(tmp_path, monkeypatch):
    from dsch_ext.dsch import trainer

    def fail(self, *args, **kwargs):
        raise RuntimeError("the first round failed")

    monkeypatch.setattr(trainer.DSCHTrainer, "fit", fail)
    from dsch_ext.cli import main as cli

    with pytest.raises(RuntimeError, match="the first round failed"):
        cli.main(["train", "--data", features_npz(tmp_path / "feats.npz"), "--out", str(tmp_path / "gone"), *TINY])
    assert not (tmp_path / "gone").exists()


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_saying_what_was_saved(tmp_path):
    import signal
    import time

    def default_sigint():
        # A job started in the background by a non-interactive shell inherits SIGINT ignored, and
        # Python then keeps it ignored (as a background `dsch train` should): restore the default
        # so the child gets the Ctrl-C of an interactive terminal whoever started pytest.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    data = features_npz(tmp_path / "feats.npz", n=2000)
    # Outputs go to files, not pipes: nothing is read until the signal, and a full pipe would
    # block the child's progress lines. Enough rounds that no machine finishes before the signal.
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "dsch_ext", "train", "--data", data, "--out", "run",
                                 *TINY[:2], "--rounds", "100000", *TINY[4:], "--no-eval"], cwd=tmp_path,
                                stdout=out, stderr=err_file, preexec_fn=default_sigint)
        try:
            deadline = time.monotonic() + 300
            while not (tmp_path / "run" / "checkpoint.pt").exists() and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "err.txt").read_text()[-3000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            proc.kill()
    err = (tmp_path / "err.txt").read_text()
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("dsch: interrupted: the last finished round is saved in") and "--resume" in lines[-1]
    assert "Traceback" not in err

