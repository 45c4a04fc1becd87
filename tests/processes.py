"""Running attrcert as a user does: ``python -m attrcert ...`` in a child process."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any


def run_attrcert(*args: str, timeout: float = 300, **kwargs: Any
                 ) -> subprocess.CompletedProcess:
    """``python -m attrcert *args``, stdout and stderr captured as text, never raising on a
    non-zero exit (the tests check the status); ``kwargs`` go to :func:`subprocess.run`."""
    return subprocess.run([sys.executable, "-m", "attrcert", *args], capture_output=True,
                          text=True, check=False, timeout=timeout, **kwargs)


def default_sigint() -> None:
    """In the child before it runs: SIGINT as a terminal delivers it. A suite started in the
    background of a non-interactive shell (``cmd &``, as a CI runner may) has SIGINT
    ignored, and children inherit that: Python then installs no handler of its own, and
    the run this test interrupts could not be interrupted at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
