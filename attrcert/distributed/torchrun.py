"""torchrun: each rank certifies its shard on its own device; every rank gathers all
records (``torch.distributed.all_gather_object``), so that all exit with the same status.

The ranks first meet within :func:`rendezvous_timeout` (30 s unless
``ATTRCERT_RENDEZVOUS_TIMEOUT`` says otherwise): ``WORLD_SIZE`` and ``RANK`` left in the
environment with no other rank to meet fail at once with what to do, instead of waiting for
torch's default of days. Only the final gather, which waits for the slowest shard, has
:data:`GATHER_TIMEOUT`."""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..document import Record
from ..errors import AttrcertError, OptionError
from .shards import Shard

#: How long a rank that finished its shard waits for the others in the final gather. The
#: shards can take very different times (GPU-days in all), so this is long on purpose.
GATHER_TIMEOUT = datetime.timedelta(days=7)
#: How long the ranks wait for each other to start, unless ``ATTRCERT_RENDEZVOUS_TIMEOUT``
#: (seconds) says otherwise.
RENDEZVOUS_TIMEOUT = datetime.timedelta(seconds=30)
RENDEZVOUS_ENV = "ATTRCERT_RENDEZVOUS_TIMEOUT"


def rendezvous_timeout() -> datetime.timedelta:
    """:data:`RENDEZVOUS_TIMEOUT`, or ``ATTRCERT_RENDEZVOUS_TIMEOUT`` seconds."""
    text = os.environ.get(RENDEZVOUS_ENV, "").strip()
    if not text:
        return RENDEZVOUS_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 7 * 86400:
        raise OptionError(f"{RENDEZVOUS_ENV}={text!r}: give the seconds the ranks wait for "
                          "each other to start (a number, at most 604800)")
    return datetime.timedelta(seconds=seconds)


class RendezvousError(OptionError):
    """The ranks did not meet: every rank says so (not only rank 0, which may not exist)."""

    every_rank = True


def _master_reachable(wait: datetime.timedelta) -> str | None:
    """For a rank that connects to the store (all but rank 0, or all under torchrun's agent):
    wait until ``MASTER_ADDR:MASTER_PORT`` accepts a connection, silently; why not, or
    ``None``. (torch's own client retries with a C++ stack trace per try on stderr.)"""
    addr, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    try:
        number = int(port)
    except ValueError:
        return f"MASTER_PORT={port!r} is not a port number"
    deadline = time.monotonic() + wait.total_seconds()
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((addr, number), timeout=max(0.1, min(1.0, left))):
                return None
        except OSError as exc:
            if left <= 0:
                return f"nothing answered within {wait.total_seconds():g} s: {exc}"
        time.sleep(0.2)


def _no_peer(shard: Shard, reason: str) -> OptionError:
    where = (f" at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
             if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT") else "")
    return RendezvousError(f"WORLD_SIZE={shard.count} and RANK={shard.index} are set, but the "
                       f"other ranks did not start{where} ({reason}): start attrcert with "
                       f"torchrun (torchrun --nproc-per-node {shard.count} -m attrcert ...), "
                       f"or unset WORLD_SIZE and RANK (left over from another job?); "
                       f"{RENDEZVOUS_ENV} sets how many seconds the ranks wait for each other")


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
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    wait = rendezvous_timeout()
    if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise _no_peer(shard, "MASTER_ADDR and MASTER_PORT, which torchrun sets, are not")
    if shard.index != 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        unreachable = _master_reachable(wait)
        if unreachable is not None:
            raise _no_peer(shard, unreachable)
    try:
        dist.init_process_group(backend, timeout=wait)
        group = dist.new_group(backend=backend, timeout=GATHER_TIMEOUT)
        assert isinstance(group, dist.ProcessGroup)  # every rank is a member
    except Exception as exc:  # torch raises ValueError, DistStoreError, DistNetworkError ...
        if dist.is_initialized():
            dist.destroy_process_group()
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise _no_peer(shard, first[:200]) from None
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
        dist.all_gather_object(results, mine, group=group)
        # every rank has every result before any rank tears its connections down (without
        # this, a rank that left early could abort a slower one still receiving, seen once
        # on a loaded 2-core machine as "terminate called without an active exception")
        dist.barrier(group=group)
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
