"""PEP 517 backend of dsch_ext: setuptools, plus the right torch in the build environment.

A torch extension must be compiled against the torch it will run with. Under plain
``pip install .`` pip builds in an isolated environment and would install whatever torch it
likes there (a 5 GB CUDA build by default), so the compiled ops could fail to load against the
user's torch. This backend asks the installing interpreter, outside the isolation, which torch
it has and requires exactly that version for the build; with no torch installed it lets pip
choose. ``pip install --no-build-isolation .`` skips all of this and is faster (README.md).
"""
import os
import subprocess
import sys

from setuptools.build_meta import *  # noqa: F401,F403  (re-export the PEP 517 hooks)

_QUERY = "import importlib.metadata as m; print(m.version('torch'))"


def _installed_torch():
    override = os.environ.get("DSCH_EXT_BUILD_TORCH")
    if override:
        return override
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    try:
        out = subprocess.run([sys.executable, "-c", _QUERY], env=env, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    version = out.stdout.strip()
    return version if out.returncode == 0 and version else None


def _torch_requirement():
    version = _installed_torch()
    req = f"torch=={version}" if version else "torch"
    print(f"[dsch_ext build] building against {req}", file=sys.stderr, flush=True)
    return [req]


# setuptools' own hooks would run setup.py to look for setup_requires, and setup.py imports
# torch, which is exactly what is not installed yet; the project has no setup_requires, so the
# build needs pyproject's [build-system] requires plus torch.


def get_requires_for_build_wheel(config_settings=None):
    return _torch_requirement()


def get_requires_for_build_editable(config_settings=None):
    return _torch_requirement()


def get_requires_for_build_sdist(config_settings=None):
    return _torch_requirement()
