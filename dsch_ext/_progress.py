"""Progress bars only where someone watches them: on an interactive terminal. Written to a file
or a pipe, carriage-return updates would flood the log, so there the callers print one line
per round or iteration instead."""
import sys


def progress_bar(total: int, desc: str):
    """A tqdm bar on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)
