"""Runs scikit-learn's own test files for GaussianMixture and KMeans against dsch_ext's.

A pytest plugin, loaded with ``-p sklearn_suite`` (``tests/`` on ``PYTHONPATH``) when pytest is
pointed at the installed scikit-learn's test files; ``tests/test_sklearn_suite.py`` does that.
Before the test module is imported, ``DSCH_SKLEARN_SWAP`` (``KMeans`` or ``GaussianMixture``)
names the estimator swapped: ``sklearn.cluster.KMeans`` / ``sklearn.mixture.GaussianMixture``
become dsch_ext's, so ``from sklearn.cluster import KMeans`` in the test file imports ours and
nothing else in the file changes. The tests that cannot apply are deselected, each with its
reason below (tests of scikit-learn-private functions, MiniBatchKMeans, ...); every other test
must pass.
"""
import os
import re

import pytest

# Run every test as scikit-learn's CI does: its float32 cases too, and its array API cases
# (torch among them) wherever array-api-compat is installed.
os.environ.setdefault("SKLEARN_RUN_FLOAT32_TESTS", "1")

SWAPS = {
    "KMeans": ("sklearn.cluster", "KMeans"),
    "GaussianMixture": ("sklearn.mixture", "GaussianMixture"),
}

_SKLEARN_OWN = "tests scikit-learn's own function or class, which is not swapped"
_PRIVATE = "calls a scikit-learn-private method of the estimator"

# Deselected tests: a regular expression searched in the test's name (its parameters
# included), and why. Everything else must pass.
EXCLUDED = {
    "KMeans": {
        r"MiniBatchKMeans|^test_minibatch_": "MiniBatchKMeans: " + _SKLEARN_OWN,
        r"^test_(relocate_empty_clusters|euclidean_distance|inertia|is_same_clustering)\b":
            "sklearn.cluster._k_means_common helpers: " + _SKLEARN_OWN,
        r"^test_kmeans_plusplus_|^test_k_means_function\b": "sklearn.cluster.kmeans_plusplus / k_means: " + _SKLEARN_OWN,
        r"^test_sample_weight_(init|zero)\b": _PRIVATE + " (_init_centroids); tests/test_kmeans.py checks the "
                                              "weighted seeding and that a weight-0 sample is never a seed",
    },
    "GaussianMixture": {
        r"^test_(suffstat_sk_|gaussian_suffstat_sk_|compute_log_det_cholesky|gaussian_mixture_log_probabilities)":
            "sklearn.mixture._gaussian_mixture helpers: " + _SKLEARN_OWN,
        r"^test_gaussian_mixture_precisions_init\[": _PRIVATE + " (_initialize, _set_parameters); "
                                                      "tests/test_gmm.py checks precisions_init",
        r"^test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters":
            "counts calls of scikit-learn's private _estimate_gaussian_parameters; tests/test_gmm.py checks that "
            "a fully given start is not estimated",
        r"^test_gaussian_mixture_raises_where_array_api_not_implemented":
            "expects NotImplementedError for init_params 'kmeans' / 'k-means++' under array_api_dispatch: "
            "dsch_ext implements every init_params there",
    },
}


def _environment_exclusions():
    """Tests that need what this machine lacks."""
    import torch

    rules = {}
    if not torch.cuda.is_available():
        rules[r"torch-cuda"] = "needs a CUDA device"
    rules[r"torch-mps"] = "needs an Apple GPU"
    return rules


def _swap(name):
    import importlib

    import dsch_ext

    module, attribute = SWAPS[name]
    setattr(importlib.import_module(module), attribute, getattr(dsch_ext, name))


def pytest_configure(config):
    name = os.environ.get("DSCH_SKLEARN_SWAP")
    if name not in SWAPS:
        raise pytest.UsageError(f"sklearn_suite: set DSCH_SKLEARN_SWAP to one of {sorted(SWAPS)}, got {name!r}")
    _swap(name)


def pytest_collection_modifyitems(config, items):
    excluded = {**EXCLUDED[os.environ["DSCH_SKLEARN_SWAP"]], **_environment_exclusions()}
    rules = [re.compile(pattern) for pattern in excluded]
    kept, dropped = [], []
    for item in items:
        (dropped if any(rule.search(item.name) for rule in rules) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
