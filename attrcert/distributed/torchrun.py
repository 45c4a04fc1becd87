"""torchrun: each rank certifies its shard on its own device; every rank gathers all
records (``torch.distributed.all_gather_object``), so that all exit with the same status."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import AttrcertError, OptionError
from ..results import Record
from .shards import Shard

#: How long a rank that finished its shard waits for the others in the final gather. The
#: shards can take very different times (GPU-days in all), so this is long on purpose.
GATHER_TIMEOUT = datetime.timedelta(days=7)


@dataclass
class RankResult:
    """What a rank sends to the others at the end: its records, or why it failed."""

    rank: int
    digest: str | None = None
    config: dict[str, Any] | None = None
    records: list[Record] | None = None
    error: str | None = None
    exit_code: int = 0
    finished: int = 0


class RankFailed(Exception):
    """Some rank failed: ``message`` (for rank 0 to print) and the common exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


def run_torchrun(shard: Shard, device: str,
                 work: Callable[[], tuple[dict[str, Any], str, list[Record]]],
                 interrupted: type[BaseException]) -> tuple[dict[str, Any], list[Record]]:
    """Run ``work`` (this rank's shard: ``(config, config_hash, records)``) inside a process
    group, then gather every rank's records on every rank.

    The backend is gloo for CPU ranks, and ``cpu:gloo,cuda:nccl`` for CUDA ranks (the
    records, Python objects, travel over gloo). A failure of ``work`` on any rank (an error,
    ``interrupted``) is sent to all ranks, so that none waits forever and all exit with the
    same status: 2 for errors, 130 for an interruption. Raises :class:`RankFailed` then.

    Returns the whole run's configuration and all records sorted by index (the same on every
    rank), after checking that the ranks agree on the configuration and that every index
    ``0 .. n-1`` came exactly once.
    """
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(shard.local_rank)
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo",
                                timeout=GATHER_TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise OptionError(f"WORLD_SIZE={shard.count} but torch.distributed cannot start "
                          f"({first}): start attrcert with torchrun, or unset WORLD_SIZE")\
            from None
    try:
        mine = RankResult(shard.index)
        try:
            config, digest, records = work()
            mine.config, mine.digest, mine.records = config, digest, records
        except AttrcertError as exc:
            mine.error, mine.exit_code = str(exc), 2
        except interrupted as exc:
            mine.error, mine.exit_code = "interrupted", 130
            mine.finished = int(getattr(exc, "finished", 0))
        except Exception as exc:  # still one line on rank 0, and no rank left waiting
            if os.environ.get("ATTRCERT_DEBUG"):
                import traceback

                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            mine.error = (f"unexpected {exc.__class__.__name__}: {first} "
                          "(set ATTRCERT_DEBUG=1 for the traceback)")
            mine.exit_code = 2
        results: list[RankResult | None] = [None] * shard.count
        dist.all_gather_object(results, mine)
        # every rank has every result before any rank tears its connections down (without
        # this, a rank that left early could abort a slower one still receiving, seen once
        # on a loaded 2-core machine as "terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return combine([r for r in results if r is not None], shard.count)


def combine(results: Sequence[RankResult], world: int) -> tuple[dict[str, Any], list[Record]]:
    """All ranks' records, checked: same configuration, each index exactly once."""
    failed = [r for r in results if r.error is not None]
    if failed:
        code = 130 if any(r.exit_code == 130 for r in failed) else 2
        errors = sorted({r.error for r in failed if r.error})
        if len(failed) == world and len(errors) == 1:
            message = errors[0]  # the same error everywhere: say it once
        else:
            first = failed[0]
            others = (f" (and {len(failed) - 1} other rank(s) failed)" if len(failed) > 1 else "")
            message = f"rank {first.rank}: {first.error}{others}"
        raise RankFailed(message, code)
    digests = {r.digest for r in results}
    if len(digests) != 1:
        raise RankFailed("the ranks disagree on the configuration (different files, versions "
                         "or options on different nodes?): run the same command with the same "
                         "files and attrcert/torch versions everywhere", 2)
    config = results[0].config
    assert config is not None
    records = sorted((rec for r in results for rec in r.records or []),
                     key=lambda rec: rec["index"])
    indices = [rec["index"] for rec in records]
    if indices != list(range(int(config["samples"]))):
        raise RankFailed(f"the ranks returned {len(indices)} records for {config['samples']} "
                         "images (missing or repeated indices): a bug, please report it", 2)
    return config, records
