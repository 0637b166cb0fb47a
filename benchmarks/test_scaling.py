"""The cost-scaling sweep (benchmarks/scaling.py) at tiny sizes: it runs, writes its JSON and
plot, and fits an exponent to every curve. The figures themselves come from the full sweep."""
import json
import os
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
sys.path.insert(0, os.path.dirname(__file__))

import scaling  # noqa: E402


def test_growth_exponent_of_a_power_law():
    assert scaling.growth_exponent([1e3, 1e4, 1e5], [2e-3, 2e-2, 2e-1]) == pytest.approx(1.0)
    assert scaling.growth_exponent([10, 20, 40], [1.0, 4.0, 16.0]) == pytest.approx(2.0)


def test_quick_sweep_writes_its_record(tmp_path):
    record = scaling.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "scaling.json").read_text())
    assert saved["gmm"]["n"] == scaling.QUICK["n"] and len(saved["hamming"]["seconds"]) == len(scaling.QUICK["hamming"])
    assert set(record["exponents"]) == {"dsch_ext_vs_n", "sklearn_vs_n", "dsch_ext_vs_m1", "sklearn_vs_m1",
                                        "hamming_vs_database"}
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["distributed"]["two_processes"] > 0 and saved["distributed"]["n"] == scaling.QUICK["distributed_n"]
    codes = scaling.synthetic_codes(50)
    assert codes.shape == (50, 64) and set(codes.ravel().tolist()) == {-1.0, 1.0}
