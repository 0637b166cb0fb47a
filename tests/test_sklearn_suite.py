"""scikit-learn's own test files for GaussianMixture and KMeans, run from the installed
scikit-learn against dsch_ext's estimators (tests/sklearn_suite.py swaps the import and lists
the tests set aside, each with its reason): every other test passes, float32 cases included."""
import os
import subprocess
import sys

import pytest

sklearn = pytest.importorskip("sklearn")

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {
    "KMeans": os.path.join("cluster", "tests", "test_k_means.py"),
    "GaussianMixture": os.path.join("mixture", "tests", "test_gaussian_mixture.py"),
}


@pytest.mark.parametrize("estimator", sorted(FILES))
def test_sklearn_test_file_passes_against_ours(estimator, tmp_path):
    path = os.path.join(os.path.dirname(sklearn.__file__), FILES[estimator])
    env = dict(os.environ, DSCH_SKLEARN_SWAP=estimator, PYTHONPATH=HERE, SCIPY_ARRAY_API="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "sklearn_suite", path, "-q", "-p", "no:cacheprovider",
                          "-W", "ignore::pytest.PytestUnraisableExceptionWarning", "--no-header", "-rfE"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    assert run.returncode == 0, f"{estimator}: {summary}\n{run.stdout[-6000:]}"
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
