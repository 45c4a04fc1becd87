"""Many processes, many machines: shards of the images, torchrun, and merging shard files.

A run over ``n`` images is split into ``N`` disjoint shards by index: shard ``I`` holds the
images ``i`` with ``i % N == I`` (strided, so that a folder sorted by class spreads evenly).
Two ways to run shards:

* ``torchrun --nproc-per-node N -m attrcert bound ...``: torchrun's environment
  (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``) makes rank ``r`` certify shard ``r`` of
  ``WORLD_SIZE`` on its own device (``LOCAL_RANK`` picks the GPU; CPU ranks use gloo). Each
  rank appends its records to ``STEM.rank<r>-of-<N>.jsonl`` beside ``--output`` (resumable);
  rank 0 gathers every rank's records with ``torch.distributed.all_gather_object``, writes
  the merged ``--output`` and prints. Every rank receives all records, so every rank
  computes the same gates and exits with the same status.
* ``--shard I/N`` without torchrun (SLURM job arrays and the like): one process certifies
  shard ``I`` into ``--output FILE.jsonl``; ``attrcert merge OUT FILE...`` joins the shard
  files and checks that no sample is missing or repeated and that the configurations match.

Every shard file (``--shard``'s ``FILE.jsonl`` and torchrun's per-rank files) has a sidecar
``FILE.config.json`` holding the configuration of the WHOLE run (the same ``config_hash`` as
a single-process run, docs/cli.md) and the shard's identity; the records themselves are exactly
those of a single-process run (``index`` is the index among all images).

Loading: for a folder of images, a rank decodes only its own shard's files (the folder is
listed, which reads names, not images). A single tensor file (``.pt``, ``.npy``,
``.safetensors``) is one file: every rank reads all of it and keeps its shard's rows.
"""

from .merge import merge_shards
from .shards import (
    Shard,
    load_shard_images,
    parse_shard,
    rank_device,
    rank_file,
    secondary_rank,
    select_shard,
    shard_image_size,
    sidecar,
    torchrun_shard,
    write_sidecar,
)
from .torchrun import GATHER_TIMEOUT, RankFailed, RankResult, combine, run_torchrun

__all__ = ["GATHER_TIMEOUT", "RankFailed", "RankResult", "Shard", "combine",
           "load_shard_images", "merge_shards", "parse_shard", "rank_device", "rank_file",
           "run_torchrun", "secondary_rank", "select_shard", "shard_image_size", "sidecar",
           "torchrun_shard", "write_sidecar"]
