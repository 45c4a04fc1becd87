"""``attrcert report``: an HTML report with figures, in three modules that import one way
(``html -> figures -> compute``, and ``html -> compute``):

- :mod:`~attrcert.report.compute`: the numbers (:func:`compute_report`: certify and attack
  at ``eps``, the eps sweep, the first sample's Jacobian) as view objects;
- :mod:`~attrcert.report.figures`: the matplotlib figures of those views;
- :mod:`~attrcert.report.html`: :func:`write_report`, the figures, ``report.json`` and the
  self-contained page.

matplotlib (the ``report`` extra) is imported only inside :func:`write_report`:
importing this package, and running every other command, works without it
(:func:`require_matplotlib` says what to install).
"""

from __future__ import annotations

from .compute import (
    FIGURES,
    JACOBIAN_MAX_D,
    SWEEP_POINTS,
    JacobianView,
    ReportData,
    ReportView,
    SampleView,
    Sweep,
    compute_report,
    default_sweep,
    parse_sweep,
    report_run,
)
from .html import INSTALL_HINT, require_matplotlib, write_report

__all__ = [
    "FIGURES",
    "INSTALL_HINT",
    "JACOBIAN_MAX_D",
    "SWEEP_POINTS",
    "JacobianView",
    "ReportData",
    "ReportView",
    "SampleView",
    "Sweep",
    "compute_report",
    "default_sweep",
    "parse_sweep",
    "report_run",
    "require_matplotlib",
    "write_report",
]
