"""The command line's user errors, and the check of ``--device`` that every command shares."""
import torch

import dsch_ext


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class Interrupted(Exception):
    """Ctrl-C: printed as one line saying what was kept, exit status 130."""


def check_device(name: str) -> torch.device:
    """``--device`` as a torch device this copy of dsch_ext can run on, or a CliError saying why not."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise CliError(f"--device {name!r} is not a device (use cpu, cuda or cuda:N)") from exc
    if device.type == "cuda":
        if dsch_ext.build_info.get("with_cuda") is False:
            raise CliError(f"--device {name}: this dsch_ext was built without its CUDA kernels (use --device cpu)")
        if not torch.cuda.is_available():
            raise CliError(f"--device {name}: no CUDA GPU is available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CliError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type != "cpu":
        raise CliError(f"--device {name!r}: dsch runs on cpu or cuda")
    return device
