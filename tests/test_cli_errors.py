"""Every ``dsch`` command given bad values: one line on stderr, exit status 2, no traceback."""
import subprocess
import sys

import numpy as np
import pytest
import torch

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
    "encode out is a dir": (["encode", "--model", "{d}/garbage.npy", "--out", "{d}/adir"], "not a readable"),
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
