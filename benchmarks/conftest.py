"""Benchmark harness: anchors and dsch_ext ops timed in the same run, ratios printed at the end.

Each benchmark checks its answer before timing. With ``--benchmark-disable`` (CI's quick
mode) every benchmark runs once on a small version of its workload, so the answer checks
still run and the files cannot rot, in seconds.
"""
import collections
import os
import sys

# scikit-learn's array API path (the GMM anchor on torch tensors) needs this before scipy loads.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import dsch_ext  # noqa: F401

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))

_medians = collections.defaultdict(dict)  # group -> {role: median seconds}


@pytest.fixture(scope="session")
def quick(request):
    """True when timing is disabled: run each workload at a small size, check answers only."""
    return bool(request.config.getoption("benchmark_disable", default=False))


@pytest.fixture
def timed(benchmark):
    """timed(group, role, label, fn, *args, rounds=3, **kwargs): benchmark fn under `group`;
    role is 'anchor' or 'ours' (with a label), used to print anchor/ours ratios after the run.
    Single-round benchmarks (slow anchors) get no warm-up round."""

    def run(group, role, label, fn, *args, rounds=3, **kwargs):
        benchmark.group = group
        benchmark.extra_info.update(role=role, label=label)
        result = benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=rounds, iterations=1,
                                    warmup_rounds=1 if rounds > 1 else 0)
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            _medians[group][(role, label)] = stats.stats.median
        return result

    return run


@pytest.fixture
def record_times():
    """record_times(group, anchor_label, anchor_s, ours_label, ours_s): a pair timed by the test
    itself (interleaved rounds, best of each), listed with the others after the run."""

    def record(group, anchor_label, anchor_s, ours_label, ours_s):
        _medians[group][("anchor", anchor_label)] = anchor_s
        _medians[group][("ours", ours_label)] = ours_s

    return record


def pytest_terminal_summary(terminalreporter):
    if not _medians:
        return
    tr = terminalreporter
    tr.section("dsch_ext speed-ups (anchor median / dsch_ext median, same run)")
    for group in sorted(_medians):
        entries = _medians[group]
        ours = [(lbl, t) for (role, lbl), t in entries.items() if role == "ours"]
        anchors = [(lbl, t) for (role, lbl), t in entries.items() if role == "anchor"]
        for olbl, ot in ours:
            for albl, at in anchors:
                tr.write_line(
                    f"{group:<28} {olbl:<24} {ot * 1e3:10.2f} ms   vs {albl:<28} {at * 1e3:10.2f} ms"
                    f"   -> {at / ot:6.2f}x"
                )
    tr.write_line(f"torch threads: {torch.get_num_threads()}, machine: {os.uname().machine}")
