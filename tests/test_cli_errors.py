"""Every ``dsch`` command given bad values: one line on stderr, exit status 2, no traceback."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsch_ext
from dsch_ext.cli import main as cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((50, 16))
    np.save(d / "codes.npy", codes)
    nan = codes.copy()
    nan[3, 4] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "complex.npy", codes.astype(np.complex128))
    np.save(d / "bits.npy", (codes > 0).astype(np.uint8))
    np.savez(d / "empty.npz")
    torch.save({}, d / "emptydict.pt")
    (d / "garbage.npy").write_bytes(b"not an array")
    (d / "adir").mkdir()
    index = dsch_ext.BinaryIndex(16)
    index.add(codes)
    index.save(d / "codes.dbix")
    feats = rng.standard_normal((60, 4)).astype(np.float32)
    feats[0, 0] = np.nan
    np.savez(d / "nanimages.npz", features=feats, labels=np.arange(60) % 3)
    labels = np.arange(60) % 3
    bad_data = {
        "img5d": dict(images=np.zeros((60, 1, 1, 8, 8), np.uint8), labels=labels),
        "img4x4": dict(images=np.zeros((60, 4, 4), np.uint8), labels=labels),
        "img1x1": dict(images=np.zeros((60, 1, 1, 1), np.uint8), labels=labels),
        "nhwc": dict(images=np.zeros((60, 28, 28, 1), np.uint8), labels=labels),
        "feat1d": dict(features=np.zeros(60, np.float32), labels=labels),
        "feat3d": dict(features=np.zeros((60, 2, 3), np.float32), labels=labels),
        "nothing": dict(features=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64)),
        "multihot": dict(features=rng.standard_normal((60, 4)), labels=np.eye(10, dtype=np.int64)[labels]),
        "negative": dict(features=rng.standard_normal((60, 4)), labels=labels - 1),
        "boollabels": dict(features=rng.standard_normal((60, 4)), labels=labels > 0),
        "huge": dict(features=rng.standard_normal((60, 4)), labels=labels * 10**12),
    }
    for name, arrays in bad_data.items():
        np.savez(d / f"{name}.npz", **arrays)
    (d / "text.npz").write_text("not an archive\n")
    (d / "text.pt").write_text("hello\n")
    torch.save(torch.nn.Linear(2, 2), d / "whole.pt")
    return d


CASES = {
    "build NaN codes": (["index", "build", "--codes", "{d}/nan.npy", "--out", "{d}/x.dbix"], "NaN or Inf"),
    "build complex codes": (["index", "build", "--codes", "{d}/complex.npy", "--out", "{d}/x.dbix"], "complex"),
    "build nbits -5": (["index", "build", "--codes", "{d}/codes.npy", "--out", "{d}/x.dbix", "--nbits", "-5"],
                       "argument --nbits: must be >= 1"),
    "build out missing dir": (["index", "build", "--codes", "{d}/codes.npy", "--out", "{d}/nowhere/x.dbix"],
                              "does not exist"),
    "build out is a dir": (["index", "build", "--codes", "{d}/codes.npy", "--out", "{d}/adir"], "is a directory"),
    "build ambiguous uint8": (["index", "build", "--codes", "{d}/bits.npy", "--out", "{d}/x.dbix"],
                              "pass --nbits 16 for one bit per column or --packed"),
    "build codes a dir": (["index", "build", "--codes", "{d}/adir", "--out", "{d}/x.dbix"], "is a directory"),
    "build empty npz": (["index", "build", "--codes", "{d}/empty.npz", "--out", "{d}/x.dbix"], "holds no arrays"),
    "build empty dict": (["index", "build", "--codes", "{d}/emptydict.pt", "--out", "{d}/x.dbix"], "holds no tensor"),
    "build garbage": (["index", "build", "--codes", "{d}/garbage.npy", "--out", "{d}/x.dbix"], "cannot read"),
    "build substrings without mih": (["index", "build", "--codes", "{d}/codes.npy", "--out", "{d}/x.dbix",
                                      "--substrings", "2"], "--substrings is for --method mih"),
    "build substrings too many": (["index", "build", "--codes", "{d}/codes.npy", "--out", "{d}/x.dbix", "--method",
                                   "mih", "--substrings", "17"], "substrings must be an int in"),
    "build method foo": (["index", "build", "--codes", "{d}/codes.npy", "--out", "{d}/x.dbix", "--method", "foo"],
                         "invalid choice"),
    "search NaN queries": (["search", "--index", "{d}/codes.dbix", "--queries", "{d}/nan.npy"], "NaN or Inf"),
    "search complex queries": (["search", "--index", "{d}/codes.dbix", "--queries", "{d}/complex.npy"], "complex"),
    "search out is a dir": (["search", "--index", "{d}/codes.dbix", "--queries", "{d}/codes.npy", "--out", "{d}/adir"],
                            "cannot write output file"),
    "search out missing dir": (["search", "--index", "{d}/codes.dbix", "--queries", "{d}/codes.npy", "--out",
                                "{d}/nowhere/o.json"], "cannot write output file"),
    "search device foo": (["search", "--index", "{d}/codes.dbix", "--queries", "{d}/codes.npy", "--device", "foo"],
                          "is not a device"),
    "search index a dir": (["search", "--index", "{d}/adir", "--queries", "{d}/codes.npy"], "is a directory"),
    "search k too large": (["search", "--index", "{d}/codes.dbix", "--queries", "{d}/codes.npy", "-k", "51"],
                           "k must be an int in [1, ntotal]"),
    "search k not an int": (["search", "--index", "{d}/codes.dbix", "--queries", "{d}/codes.npy", "-k", "2.5"],
                            "argument -k: must be an integer"),
    "encode out is a dir": (["encode", "--model", "{d}/garbage.npy", "--out", "{d}/adir"], "the suffix decides"),
    "eval model garbage": (["eval", "--model", "{d}/garbage.npy"], "not a readable dsch_ext model file"),
    "eval model a dir": (["eval", "--model", "{d}/adir"], "is a directory"),
    "components model garbage": (["components", "--model", "{d}/garbage.npy"], "not a readable dsch_ext model file"),
    "components model a dir": (["components", "--model", "{d}/adir"], "is a directory"),
    "train NaN images": (["train", "--data", "{d}/nanimages.npz", "--out", "{d}/run"], "nanimages.npz: features contain NaN"),
    "demo k too large": (["search-demo", "-k", "500", "--database", "100"], "-k must be in [1, --database]"),
    "demo no queries": (["search-demo", "--queries", "0"], "argument --queries: must be >= 1"),
    "demo empty database": (["search-demo", "--database", "0"], "argument --database: must be >= 1"),
    "demo negative database": (["search-demo", "--database", "-5"], "argument --database: must be >= 1"),
    "demo zero bits": (["search-demo", "--bits", "0"], "argument --bits: must be in [1, 65536]"),
    "demo device foo": (["search-demo", "--device", "foo"], "is not a device"),
    "unknown option": (["train", "--out", "r", "--colour", "red"], "unrecognized arguments"),
    # data files that cannot be trained on
    "train 5-D images": (["train", "--data", "{d}/img5d.npz", "--out", "{d}/r"], "images must be [N, H, W] or [N, C, H, W]"),
    "train 4x4 images": (["train", "--data", "{d}/img4x4.npz", "--out", "{d}/r"], "images of 4 x 4 pixels"),
    "train 1x1 images": (["train", "--data", "{d}/img1x1.npz", "--out", "{d}/r"], "images of 1 x 1 pixels"),
    "train NHWC images": (["train", "--data", "{d}/nhwc.npz", "--out", "{d}/r"], "channels last?"),
    "train 1-D features": (["train", "--data", "{d}/feat1d.npz", "--out", "{d}/r"], "features must be 2-D"),
    "train 3-D features": (["train", "--data", "{d}/feat3d.npz", "--out", "{d}/r"], "features must be 2-D"),
    "train empty data": (["train", "--data", "{d}/nothing.npz", "--out", "{d}/r"], "is empty"),
    "encode empty data": (["encode", "--model", "{d}/garbage.npy", "--data", "{d}/nothing.npz", "--out", "{d}/c.npy"],
                          "is empty"),
    "train multi-hot labels": (["train", "--data", "{d}/multihot.npz", "--out", "{d}/r"], "single-label data"),
    "train negative labels": (["train", "--data", "{d}/negative.npz", "--out", "{d}/r"], "class ids >= 0"),
    "train bool labels": (["train", "--data", "{d}/boollabels.npz", "--out", "{d}/r"], "integer class ids"),
    "train huge labels": (["train", "--data", "{d}/huge.npz", "--out", "{d}/r", "--query-per-class", "1",
                           "--train-per-class", "1", "--rounds", "1", "--no-eval", "--resume"], "no checkpoint at"),
    "train text as npz": (["train", "--data", "{d}/text.npz", "--out", "{d}/r"], "is not a .npz file"),
    # option values
    "train zero rounds": (["train", "--out", "{d}/r", "--rounds", "0"], "argument --rounds: must be >= 1"),
    "train negative rounds": (["train", "--out", "{d}/r", "--rounds", "-1"], "argument --rounds: must be >= 1"),
    "train batch 0": (["train", "--out", "{d}/r", "--batch-size", "0"], "argument --batch-size: must be >= 2"),
    "train width 0": (["train", "--out", "{d}/r", "--width", "0"], "argument --width: must be >= 1"),
    "train bits 100000": (["train", "--out", "{d}/r", "--bits", "100000"], "argument --bits: must be in [1, 1024]"),
    "train input size 16": (["train", "--out", "{d}/r", "--backbone", "vgg11", "--input-size", "16"],
                            "argument --input-size: must be in [32, 1024]"),
    "train resume nothing": (["train", "--out", "{d}/nothing", "--resume"], "--resume: no checkpoint at"),
    "eval bits 0": (["eval", "--baselines", "itq", "--bits", "0"], "argument --bits: must be >= 1"),
    "eval bits 785": (["eval", "--baselines", "itq", "--bits", "785"], "exceeds the number of features 784"),
    "demo bits 0": (["demo", "--bits", "0"], "argument --bits: must be in [1, 1024]"),
    "demo bits 785": (["demo", "--bits", "785", "--rounds", "1"], "exceeds the number of features 784"),
    "demo no training images": (["demo", "--train-per-class", "0"], "argument --train-per-class: must be >= 1"),
    "eval negative queries": (["eval", "--baselines", "lsh", "--query-per-class", "-1"],
                              "argument --query-per-class: must be >= 1"),
    "encode npz out": (["encode", "--model", "{d}/garbage.npy", "--out", "{d}/c.txt"], "the suffix decides"),
    # files that are not what they are named
    "model is an index": (["eval", "--model", "{d}/codes.dbix"], "it is a dsch_ext index file"),
    "model is text": (["eval", "--model", "{d}/text.pt"], "not a file torch.save wrote"),
    "codes are text": (["index", "build", "--codes", "{d}/text.npz", "--out", "{d}/x.dbix"], "it is not a .npz file"),
    "weights are a whole model": (["train", "--out", "{d}/r", "--backbone", "resnet18", "--weights", "{d}/whole.pt"],
                                  "pickled Python objects"),
}
if not torch.cuda.is_available():
    CASES.update({
        "search device cuda": (["search", "--index", "{d}/codes.dbix", "--queries", "{d}/codes.npy", "--device", "cuda"],
                               "--device cuda"),
        "encode device cuda": (["encode", "--model", "{d}/garbage.npy", "--out", "{d}/c.npy", "--device", "cuda"],
                               "--device cuda"),
        "demo device cuda": (["search-demo", "--device", "cuda"], "--device cuda"),
    })


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_values_give_one_line_and_exit_2(case, files, capsys):
    argv, message = CASES[case]
    try:
        code = cli.main([a.format(d=files) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0], lines[0]
    assert "weights_only=False" not in err and "weights_only` set to `False`" not in err and "\x1b[" not in err


# Every command's numeric options given values no run can use: one line, exit 2, never a
# traceback. Options with an upper bound (code lengths, image sizes, k) get values above it too.
NUMERIC_OPTIONS = {
    "train": {"--bits": 1024, "--rounds": None, "--epochs-per-round": None, "--m1": None, "--m2": None,
              "--batch-size": None, "--width": None, "--query-per-class": None, "--train-per-class": None,
              "--input-size": 1024, "--gmm-max-iter": None},
    "eval": {"--bits": None, "--query-per-class": None, "--train-per-class": None},
    "demo": {"--bits": 1024, "--train-per-class": None, "--rounds": None},
    "search-demo": {"--database": None, "--queries": None, "--bits": 65536},
    "search": {"-k": 50},
}


@given(command=st.sampled_from(sorted(NUMERIC_OPTIONS)), data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_bad_option_values_never_trace_back(command, data, files, capsys):
    option = data.draw(st.sampled_from(sorted(NUMERIC_OPTIONS[command])))
    high = NUMERIC_OPTIONS[command][option]
    invalid = [st.integers(-10**13, 0), st.sampled_from(["2.5", "x", "", "nan", "1e3"])]
    if high is not None:
        invalid.append(st.integers(high + 1, 10**13))
    value = data.draw(st.one_of(*invalid))
    base = {"train": ["train", "--out", f"{files}/hyp"], "eval": ["eval", "--baselines", "lsh"],
            "demo": ["demo"], "search-demo": ["search-demo"],
            "search": ["search", "--index", f"{files}/codes.dbix", "--queries", f"{files}/codes.npy"]}[command]
    try:
        code = cli.main(base + [option, str(value)])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (command, option, value, err)


@given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=5), key=st.sampled_from(["images", "features"]),
       dtype=st.sampled_from([np.uint8, np.float32, np.int64, np.bool_, np.complex64]),
       label_shape=st.sampled_from(["match", "2d", "short"]), label_kind=st.sampled_from(["ok", "neg", "float"]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_bad_data_files_never_trace_back(shape, key, dtype, label_shape, label_kind, files, capsys):
    n = shape[0]
    labels = {"match": np.arange(n) % 3, "2d": (np.arange(n * 2).reshape(n, 2) % 5), "short": np.arange(max(n - 1, 0))}[
        label_shape]
    labels = labels - 1 if label_kind == "neg" else labels.astype(np.float32) if label_kind == "float" else labels
    path = files / "hyp.npz"
    np.savez(path, **{key: np.zeros(shape, dtype=dtype), "labels": labels})
    try:  # tiny settings: should the data be valid, the run is short
        code = cli.main(["train", "--data", str(path), "--out", f"{files}/hyprun", "--rounds", "1", "--epochs-per-round",
                         "1", "--m1", "2", "--m2", "1", "--no-eval", "--query-per-class", "1", "--train-per-class", "1",
                         "--bits", "8", "--width", "2", "--gmm-max-iter", "1"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, (shape, key, dtype, label_shape, label_kind, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


def test_broken_pipe_is_one_line(files):
    """`dsch search ... | head`: the reader closes the pipe early."""
    np.save(files / "many.npy", np.random.default_rng(1).standard_normal((2000, 16)))
    cmd = (f"{sys.executable} -m dsch_ext search --index {files}/codes.dbix --queries {files}/many.npy -k 50 "
           "--format csv | head -1")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, cwd=files)
    assert out.stdout == "query,rank,id,distance\n"
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "dsch: error: output closed before it was all written (broken pipe)"], out.stderr


def test_uint8_codes_with_nbits_or_packed(files, capsys):
    assert cli.main(["index", "build", "--codes", f"{files}/bits.npy", "--out", f"{files}/b.dbix", "--nbits", "16"]) == 0
    assert dsch_ext.BinaryIndex.load(files / "b.dbix").nbits == 16
    assert cli.main(["index", "build", "--codes", f"{files}/bits.npy", "--out", f"{files}/p.dbix", "--packed"]) == 0
    assert dsch_ext.BinaryIndex.load(files / "p.dbix").nbits == 128


def test_import_from_an_unbuilt_source_tree_says_what_to_do(tmp_path):
    import os
    import shutil

    package = os.path.dirname(dsch_ext.__file__)
    shutil.copytree(package, tmp_path / "dsch_ext", ignore=shutil.ignore_patterns("_C.*", "__pycache__"))
    out = subprocess.run([sys.executable, "-c", "import dsch_ext"], capture_output=True, text=True, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode != 0
    assert "compiled kernels (dsch_ext._C) are not in" in out.stderr and "pip install" in out.stderr


def test_help_texts(capsys):
    for argv in (["--help"], ["results", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
    text = " ".join(capsys.readouterr().out.split())
    assert "train DSCH hash networks" in text and "``" not in text
    assert "(default: fashion-mnist)" in text
