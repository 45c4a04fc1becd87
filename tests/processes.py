"""Running attrcert as a user does: ``python -m attrcert ...`` in a child process."""

from __future__ import annotations

import subprocess
import sys
from typing import Any


def run_attrcert(*args: str, timeout: float = 300, **kwargs: Any
                 ) -> subprocess.CompletedProcess:
    """``python -m attrcert *args``, stdout and stderr captured as text, never raising on a
    non-zero exit (the tests check the status); ``kwargs`` go to :func:`subprocess.run`."""
    return subprocess.run([sys.executable, "-m", "attrcert", *args], capture_output=True,
                          text=True, check=False, timeout=timeout, **kwargs)
