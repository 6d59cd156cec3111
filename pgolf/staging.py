"""Write a result folder completely or not at all, even when the process is stopped by a signal."""

import os
import shutil
import signal
import tempfile
from contextlib import contextmanager


class OutputExists(FileExistsError):
    """The output folder already holds results and replacing them was not asked for."""


class Interrupted(KeyboardInterrupt):
    """Stopped by SIGINT (Ctrl-C) or SIGTERM. A KeyboardInterrupt, so every `except BaseException` clean-up
    (staged_dir's among them) runs as for Ctrl-C; the CLIs exit with 128 + signum, as a shell reports a signal."""

    def __init__(self, signum: int, message: str | None = None):
        self.signum = signum
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")


def check_target(target: str, replace: bool, flag: str = "--force") -> None:
    """Refuse a non-empty `target` unless replacing; `flag` is the calling command's option that asks for it."""
    if os.path.exists(target) and not os.path.isdir(target):
        raise OutputExists(f"output {target} is a file, not a folder: choose another output folder or remove the file")
    if os.path.exists(target) and os.listdir(target) and not replace:
        raise OutputExists(f"output folder {target} already holds results (pass {flag} to replace them)")


@contextmanager
def staged_dir(target: str, replace: bool = False, flag: str = "--force"):
    """Yield a fresh sibling folder; on success it becomes `target`, on any failure it is removed.

    Readers of `target` see either the old complete results or the new complete results, never a mix.
    """
    target = os.path.abspath(target)
    check_target(target, replace, flag)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.partial-", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would leave the results unreadable to others
    try:
        yield staging
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
            os.rename(target, os.path.join(old, "previous"))
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
