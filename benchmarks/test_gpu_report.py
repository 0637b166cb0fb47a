"""The GPU kit (scripts/gpu_check.sh) checked where no GPU is: a GPU is lent rarely and briefly,
so an error in the kit's own script, report or rate probe must show up here, not there.

- ``gpu_report.py --smoke`` runs every row of the report at tiny sizes (on the CPU here): every
  code path of the report, with the answer checks it makes on a GPU.
- ``gpu_check.sh`` parses and keeps inside its total time, the recorded static bounds it prints
  beside the report print, and ``bmma_rate.cu`` compiles for the oldest and newest GPUs the
  kernels target.
"""
import json
import os
import subprocess
import sys

import pytest

import sass_bounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every row the report prints, in order (the E1 and scikit-learn rows say "not run" without scikit-learn).
REPORT_ROWS = [
    "hamming_topk H1", "hamming_topk H3", "hamming_topk H5", "hamming_topk H6",
    "hamming_range R1 r=8", "hamming_range R1 r=22",
    "gmm_log_resp full f32 G1", "gmm_log_resp full f64 G1", "gmm_log_resp full f32 G5", "gmm_log_resp full f64 G5",
    "gmm_log_resp diag f32 G3",
    "center_distances fwd+bwd C1", "center_distances fwd C1",
    "center_distances fwd+bwd C1 at D=128", "center_distances fwd C1 at D=128",
    "nearest_center C2", "KMeans.fit K1",
]


def test_gpu_report_smoke_run_prints_every_row_with_right_answers():
    # -P: the installed dsch_ext, not the unbuilt source tree at the working directory.
    run = subprocess.run([sys.executable, "-P", os.path.join("benchmarks", "gpu_report.py"), "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "smoke run" in lines[0], lines[0]
    rows = [[cell.strip() for cell in line.split(" | ")] for line in lines[2:]]
    names = [row[0] for row in rows]
    assert names[:len(REPORT_ROWS)] == REPORT_ROWS, names
    assert len(rows) == len(REPORT_ROWS) + 3, names  # E1 and the two scikit-learn rows, or their "not run" rows
    for row in rows:
        assert len(row) == 6, row
        assert not row[5].startswith("False") and "anchor differs" not in row[3], row
        assert "nan" not in row[3], row
        if "not run" not in row[3]:
            assert float(row[2]) > 0, row
    c2 = rows[names.index("nearest_center C2")]
    assert c2[5].startswith("100.000% same index, CPU True"), c2


def test_gpu_report_refuses_to_run_without_a_gpu_unless_smoke(monkeypatch):
    import gpu_report

    monkeypatch.setattr(gpu_report.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_report.py"])
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        gpu_report.main()


def test_gpu_check_script_parses():
    run = subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", "gpu_check.sh")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_gpu_check_skips_and_names_the_steps_its_total_time_leaves_no_room_for(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), TOTAL_LIMIT_S="10", PYTHON=sys.executable)
    run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    skipped = [line.split()[1].rstrip(":") for line in run.stdout.splitlines() if "skipped" in line]
    assert skipped == ["build", "tests", "bench", "train", "sanitize"], run.stdout


def test_recorded_static_bounds_print_every_workload(capsys):
    assert sass_bounds.main(["--recorded"]) == 0
    lines = capsys.readouterr().out.splitlines()
    with open(sass_bounds.RECORD) as f:
        recorded = json.load(f)
    assert [line.split()[0] for line in lines[1:]] == list(recorded), lines
    for line, (wid, bound) in zip(lines[1:], recorded.items()):
        assert f"{bound['bound_ms']:.3f} ms" in line and bound["binding"] in line, line


def test_bmma_rate_probe_compiles_for_sm80_and_sm90(tmp_path):
    nvcc = sass_bounds.nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    arches = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in (80, 90)]
    run = subprocess.run([nvcc, "-O3", *arches, "-c", os.path.join(ROOT, "benchmarks", "bmma_rate.cu"),
                          "-o", str(tmp_path / "bmma_rate.o")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
