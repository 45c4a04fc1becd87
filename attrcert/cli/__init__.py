"""The command line (docs/cli.md), one module per command on one Typer app (:mod:`.app`):

- :mod:`.bound` (``bound``, ``attack``), :mod:`.max_eps`, :mod:`.report`, :mod:`.inspect`,
  :mod:`.merge`;
- :mod:`.options`: every option declared once, and the decorator that shares them;
- :mod:`.inputs`: loading what a command needs; :mod:`.runner`: resuming, streaming,
  shards, progress; :mod:`.output`: tables, JSON, gates.

No math here.
"""

from .app import app, main

__all__ = ["app", "main"]
