"""Many processes (issue 9): real torchrun runs on CPU (gloo) give the records of a single
process, a killed rank resumes without loss or repetition, ``--shard I/N`` + ``merge``
equals the single run, and ``merge`` refuses what does not fit together."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attrcert.distributed import (
    RankFailed,
    RankResult,
    Shard,
    combine,
    load_shard_images,
    parse_shard,
)
from attrcert.errors import OptionError

from .conftest import SAMPLES, run_main

MODEL = str(SAMPLES / "digits_softplus.pt2")
FAST = ["--method", "saliency", "--quiet"]


def torchrun(*args: str, nproc: int = 2, **kw) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node N -m attrcert ARGS`` (torchrun is
    ``python -m torch.distributed.run``; --standalone takes a free port)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", str(nproc), "-m", "attrcert", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **kw)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_seconds(records: list[dict]) -> list[dict]:
    """The records without their time (nor, in JSONL files, the seal of their line)."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "record_sha256")}
            for r in records]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Six of the sample digits as PNG files."""
    d = tmp_path_factory.mktemp("digits")
    for f in sorted((SAMPLES / "digits").glob("*.png"))[:6]:
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture(scope="module")
def tensor_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("t") / "eight.pt"
    torch.save(torch.load(SAMPLES / "digits.pt", weights_only=True)[:8].clone(), path)
    return path


# --- shards -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["0/1", "0/2", "1/2", "6/7", "12/100"])
def test_parse_shard(text):
    shard = parse_shard(text)
    assert shard.label == text and not shard.torchrun


@pytest.mark.parametrize("text", ["1/1", "2/2", "-1/2", "0/0", "a/b", " 0/2", "0/2 ", "0 / 2",
                                  "0/2/3", "1", "", "+1/2", "0.5/2"])
def test_parse_shard_is_strict(text):
    with pytest.raises(OptionError, match="0 <= I < N"):
        parse_shard(text)


def test_shards_partition_the_indices():
    """Brute force: for every n and N, the N shards are disjoint and cover 0..n-1."""
    for n in range(1, 12):
        for count in range(1, 14):
            parts = [Shard(i, count).indices(n) for i in range(count)]
            flat = sorted(i for part in parts for i in part)
            assert flat == list(range(n))
            assert all(part == sorted(part) for part in parts)


def test_a_shard_decodes_only_its_own_images(folder, tmp_path):
    """The other shard's files are garbage here: loading shard 0 of 2 must not notice."""
    d = tmp_path / "half_broken"
    d.mkdir()
    names = sorted(p.name for p in folder.iterdir())
    for i, name in enumerate(names):
        if i % 2 == 0:
            shutil.copy(folder / name, d / name)
        else:
            (d / name).write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(50))
    images, rows = load_shard_images(d, Shard(0, 2), channels=1)
    assert rows == [0, 2, 4]
    assert images.sources == names and images.tensor.shape == (3, 1, 28, 28)
    with pytest.raises(Exception, match="digit_01"):
        load_shard_images(d, Shard(1, 2), channels=1)


def test_combine_checks_the_ranks():
    ok = [RankResult(0, "h", {"samples": 3}, [{"index": 0}, {"index": 2}]),
          RankResult(1, "h", {"samples": 3}, [{"index": 1}])]
    config, records = combine(ok, 2)
    assert config == {"samples": 3} and [r["index"] for r in records] == [0, 1, 2]
    with pytest.raises(RankFailed, match="disagree") as exc:
        combine([ok[0], RankResult(1, "other", {"samples": 3}, [{"index": 1}])], 2)
    assert exc.value.exit_code == 2
    with pytest.raises(RankFailed, match="missing or repeated"):
        combine([ok[0], RankResult(1, "h", {"samples": 3}, [{"index": 2}])], 2)
    with pytest.raises(RankFailed, match="rank 1: broken") as exc:
        combine([ok[0], RankResult(1, error="broken", exit_code=2)], 2)
    assert exc.value.exit_code == 2
    with pytest.raises(RankFailed) as exc:  # the same error on every rank: said once
        combine([RankResult(0, error="same", exit_code=2),
                 RankResult(1, error="same", exit_code=2)], 2)
    assert exc.value.message == "same"
    with pytest.raises(RankFailed) as exc:
        combine([ok[0], RankResult(1, error="interrupted", exit_code=130)], 2)
    assert exc.value.exit_code == 130


@pytest.mark.parametrize("command", ["certify", "max_eps"])
def test_a_record_does_not_depend_on_the_samples_before_it(command, tensor_file):
    """What sharding rests on: the same image gives the same record wherever it stands in
    a run (max_eps once reused a sample's tolerance as the next batch's solver tol)."""
    from attrcert import certify, max_eps
    from attrcert.loading import load_model

    model = load_model(Path(MODEL))
    x = torch.load(tensor_file, weights_only=True)[[1, 0, 1, 1]]
    kwargs = {"eps": 0.1} if command == "certify" else {"omega": 5, "metric": "angle"}
    func = certify if command == "certify" else max_eps
    records = without_seconds(func(model, x, steps=4, spectral="iterative", **kwargs))
    for r in records:
        r.pop("index")
    assert records[0] == records[2] == records[3]
    assert records[0] != records[1]


# --- --shard and merge ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["bound", "--eps", "0.2"],
    ["max-eps", "--omega", "5", "--metric", "angle"],
    ["attack", "--attack-steps", "2"],
])
def test_shards_then_merge_equal_the_single_run(command, tensor_file, tmp_path, capsys):
    name, *options = command
    base = [name, MODEL, str(tensor_file), "--steps", "4", "--quiet", *options]
    code, out, err = run_main([*base, "--format", "json"], capsys)
    assert code == 0, err
    single = json.loads(out)
    shards = []
    for i in range(3):
        path = tmp_path / f"shard-{i}.jsonl"
        code, out, err = run_main([*base, "--shard", f"{i}/3", "--output", str(path),
                                   "--format", "json"], capsys)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["config"]["shard"] == f"{i}/3"
        assert [s["index"] for s in doc["samples"]] == list(range(i, 8, 3))
        assert (tmp_path / f"shard-{i}.config.json").is_file()
        shards.append(str(path))
    merged = tmp_path / "merged.json"
    code, out, err = run_main(["merge", str(merged), *reversed(shards)], capsys)
    assert code == 0, err
    assert out == "" and "merged 8 samples from 3 shard files" in err
    doc = json.loads(merged.read_text())
    assert doc["config"] == single["config"]
    assert without_seconds(doc["samples"]) == without_seconds(single["samples"])
    doc["summary"].pop("seconds")
    single["summary"].pop("seconds")
    assert doc["summary"] == single["summary"]


def test_merge_refuses_what_does_not_fit(tensor_file, tmp_path, capsys):
    def shard(i: int, count: int, name: str, *extra: str) -> Path:
        path = tmp_path / f"{name}.jsonl"
        code, _, err = run_main(["bound", MODEL, str(tensor_file), *FAST, "--shard",
                                 f"{i}/{count}", "--output", str(path), *extra], capsys)
        assert code == 0, err
        return path

    a0, a1 = shard(0, 2, "a0"), shard(1, 2, "a1")
    kept = a0.read_text()
    code, _, err = run_main(["bound", MODEL, str(tensor_file), *FAST, "--shard", "0/2",
                             "--output", str(a0)], capsys)  # a shard resumes like any run
    assert code == 0 and "resuming: 4 of 4 samples already in" in err, err
    assert a0.read_text() == kept
    code, _, err = run_main(["bound", MODEL, str(tensor_file), *FAST, "--shard", "0/3",
                             "--output", str(a0)], capsys)
    assert code == 2 and "not in shard 0/3" in err, err
    assert a0.read_text() == kept
    b1 = shard(1, 2, "b1", "--eps", "0.2")
    out = str(tmp_path / "m.json")

    def refused(*files: Path, word: str) -> None:
        code, stdout, err = run_main(["merge", out, *map(str, files)], capsys)
        assert code == 2 and stdout == ""
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
        assert word in err, err
        assert not Path(out).exists()

    refused(a0, b1, word="another configuration")
    refused(a0, b1, word="eps")  # names what differs
    refused(a0, word="4 of 8 samples are missing")
    dup = tmp_path / "dup.jsonl"
    shutil.copy(a1, dup)
    shutil.copy(tmp_path / "a1.config.json", tmp_path / "dup.config.json")
    refused(a0, a1, dup, word="is in both")
    refused(a0, a0, word="given twice")
    lone = tmp_path / "lone.jsonl"
    shutil.copy(a1, lone)
    refused(a0, lone, word="lone.config.json")
    cut = tmp_path / "cut.jsonl"
    cut.write_text(a1.read_text()[:-30])
    shutil.copy(tmp_path / "a1.config.json", tmp_path / "cut.config.json")
    refused(a0, cut, word="not JSON")
    assert a1.read_text() != cut.read_text()  # merge never repairs or rewrites its inputs
    code, _, err = run_main(["merge", str(a0), str(a0), str(a1)], capsys)
    assert code == 2 and "is the same file as the shard file" in err
    code, _, err = run_main(["merge", out, str(a0), str(a1)], capsys)
    assert code == 0, err


@pytest.mark.parametrize(("extra", "env", "word"), [
    (["--shard", "0/2"], {}, "--output FILE.jsonl"),
    (["--shard", "2/2", "--output", "{tmp}/s.jsonl"], {}, "0 <= I < N"),
    (["--shard", "0/2", "--output", "{tmp}/s.jsonl"], {"WORLD_SIZE": "2", "RANK": "0"},
     "torchrun"),
    (["--shard", "8/9", "--output", "{tmp}/s.jsonl"], {}, "only 8 images"),
    ([], {"WORLD_SIZE": "2", "RANK": "0"}, "start attrcert with torchrun"),
    ([], {"WORLD_SIZE": "2", "RANK": "2"}, "start attrcert with torchrun"),
    (["--shard", "0/2", "--output", "{tmp}/s.jsonl", "--save-attributions", "{tmp}/a.safetensors"],
     {}, "--save-attributions"),
])
def test_shard_option_errors_are_one_line(extra, env, word, tensor_file, tmp_path, capsys,
                                          monkeypatch):
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = ["bound", MODEL, str(tensor_file), *FAST,
            *(a.replace("{tmp}", str(tmp_path)) for a in extra)]
    code, out, err = run_main(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert word in err, err


# --- torchrun ---------------------------------------------------------------------------------

def test_torchrun_two_ranks_match_the_single_process_run(folder, tmp_path, capsys):
    """A real 2-process gloo run: the same records (all fields but seconds), the same
    configuration and summary, on stdout and in --output; stdout only from rank 0."""
    base = ["bound", MODEL, str(folder), *FAST, "--format", "json"]
    code, out, err = run_main(base, capsys)
    assert code == 0, err
    single = json.loads(out)
    merged = tmp_path / "all.json"
    proc = torchrun(*base, "--output", str(merged))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    printed = json.loads(stdout)  # one document: rank 1 printed nothing
    written = json.loads(merged.read_text())
    for doc in (printed, written):
        assert doc["config"] == single["config"]
        assert without_seconds(doc["samples"]) == without_seconds(single["samples"])
        assert {k: v for k, v in doc["summary"].items() if k != "seconds"} == \
            {k: v for k, v in single["summary"].items() if k != "seconds"}
    for rank in range(2):  # each rank streamed its shard, with the whole run's config_hash
        part = lines(tmp_path / f"all.rank{rank}-of-2.jsonl")
        assert [r["index"] for r in part] == list(range(rank, 6, 2))
        side = json.loads((tmp_path / f"all.rank{rank}-of-2.config.json").read_text())
        assert side["config"] == single["config"] and side["shard"] == {"index": rank,
                                                                        "count": 2}
    assert {r["config_hash"] for r in written["samples"]} == \
        {r["config_hash"] for r in single["samples"]}
    # the per-rank files merge to the same records too
    again = tmp_path / "again.jsonl"
    code, _, err = run_main(["merge", str(again), str(tmp_path / "all.rank0-of-2.jsonl"),
                             str(tmp_path / "all.rank1-of-2.jsonl")], capsys)
    assert code == 0, err
    assert without_seconds(lines(again)) == without_seconds(single["samples"])


def test_torchrun_error_on_one_rank_is_one_line_from_rank_0(folder, tmp_path):
    """An unreadable image in rank 1's shard: rank 0 says so once, every rank exits 2."""
    d = tmp_path / "broken"
    shutil.copytree(folder, d)
    victim = sorted(d.iterdir())[3]  # index 3: rank 1's shard
    victim.write_bytes(victim.read_bytes()[:60])
    proc = torchrun("bound", MODEL, str(d), *FAST)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0 and stdout == ""
    ours = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert ours == [f"error: rank 1: cannot read image {victim} (corrupt or truncated?): "
                    "OSError: image file is truncated"], stderr
    # torchrun's own report: both ranks exited with status 2 (none was left waiting)
    assert stderr.count("exitcode  : 2") + stderr.count("exitcode  : -15") == 2, stderr


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            ppid = next(int(line.split()[1]) for line in status.splitlines()
                        if line.startswith("PPid:"))
            parents[int(entry.name)] = ppid
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    for pid in _descendants(torchrun_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env):
            return pid
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_killed_rank_resumes_without_loss_or_repetition(tensor_file, tmp_path, capsys):
    args = ["bound", MODEL, str(tensor_file), "--steps", "20", "--quiet", "--format", "json"]
    out = tmp_path / "r.json"
    part = tmp_path / "r.rank1-of-2.jsonl"
    proc = torchrun(*args, "--output", str(out))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and part.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0, stderr  # torchrun stops the other rank and fails
    assert not out.exists()
    before = part.read_text().splitlines()
    assert 1 <= len(before) < 4, "rank 1 was not killed mid-run"
    rerun = torchrun(*args, "--output", str(out))
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    after = part.read_text().splitlines()
    assert after[:len(before)] == before  # kept, not recomputed
    for rank in range(2):  # each rank's file: its shard, each sample once
        assert [r["index"] for r in lines(tmp_path / f"r.rank{rank}-of-2.jsonl")] == \
            list(range(rank, 8, 2))
    code, single, err = run_main(args, capsys)
    assert code == 0, err
    expected = without_seconds(json.loads(single)["samples"])
    assert without_seconds(json.loads(stdout)["samples"]) == expected
    assert without_seconds(json.loads(out.read_text())["samples"]) == expected
