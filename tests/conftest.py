"""Shared fixtures: the devices to test on (CUDA whenever a GPU is visible)."""
import pytest
import torch

import dsch_ext  # noqa: F401  (registers the ops before any test imports them)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


@pytest.fixture
def generator():
    """A fresh seeded generator per test: inputs are random but reproducible."""
    return torch.Generator().manual_seed(torch.initial_seed() % (2**31))
