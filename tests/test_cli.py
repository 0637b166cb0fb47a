"""The `dsch` command line: demo and info (the index commands are tested in test_index.py)."""
import json
import subprocess
import sys


def run(tmp_path, *args):
    # From outside the repository, so the installed package is imported.
    return subprocess.run([sys.executable, "-m", "dsch_ext", *args], capture_output=True, text=True, cwd=tmp_path)


def test_demo_runs_and_matches_brute_force(tmp_path):
    result = run(tmp_path, "demo", "--database", "5000", "--queries", "20", "-k", "50", "--bits", "32")
    assert result.returncode == 0, result.stderr
    assert "identical to brute force on 20 queries (distances, indices, ties): True" in result.stdout


def test_info_reports_the_build(tmp_path):
    result = run(tmp_path, "info")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["source"] == "dsch_ext._C" and "torch" in info
