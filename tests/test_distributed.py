"""`cnntools train` on two CPU processes (gloo): DistributedDataParallel must train exactly
like one process with the same global batch, validate like a one-process `eval` of the
checkpoint, write once, resume across modes, and fail fast with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnntools.checkpoint import load_model, read_checkpoint
from train_helpers import checkpoint_weights as _weights

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; gloo on Linux")

# 410 train images (even: no rank pads its shard) and 41 validation images (odd: a padded
# validation shard would count an image twice). LeNet has no dropout and no BatchNorm, and
# without augmentation nothing random happens during training: the only difference between
# one process and two is the order of float sums.
DATA = ["--data", "fake:451,size=16,channels=1", "--val-split", "0.1"]
RUN = [*DATA, "--arch", "lenet", "--batch-size", "64", "--opt", "adam", "--lr", "0.003", "--augment", "none",
       "--precision", "fp32", "--device", "cpu", "--keep", "last", "-q", "--format", "jsonl"]
PROBE = Path(__file__).parent / "write_probe"


def _env(**extra) -> dict:
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"),) if p)
    return {**os.environ, "NO_COLOR": "1", "CNNTOOLS_DEBUG": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def _cnntools(*args, env=None, timeout=120, launcher=()) -> subprocess.CompletedProcess:
    command = [sys.executable, *launcher, "-m", "cnntools", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env or _env(), timeout=timeout)


def _torchrun(*args) -> subprocess.CompletedProcess:
    """The real torchrun (python -m torch.distributed.run), two processes on this machine."""
    return _cnntools(*args, launcher=("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"))


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _close(a: dict, b: dict, atol=2e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=atol) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process and two processes (`train --nproc 2`), 3 epochs each; the two-process run
    logs every file write with its rank."""
    tmp = tmp_path_factory.mktemp("ddp")
    single = _cnntools("train", *RUN, "--epochs", "3", "-o", tmp / "single.safetensors")
    assert single.returncode == 0, single.stderr
    log = tmp / "writes.log"
    env = _env(PYTHONPATH=os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")])),
               CNNTOOLS_TEST_WRITE_LOG=str(log))
    double = _cnntools("train", "--nproc", "2", *RUN, "--epochs", "3", "-o", tmp / "ddp.safetensors", env=env)
    assert double.returncode == 0, double.stderr
    return {"tmp": tmp, "single": single, "ddp": double, "writes": log.read_text().splitlines()}


def test_two_processes_train_like_one_with_the_same_global_batch(runs):
    tmp = runs["tmp"]
    one, two = _records(runs["single"].stdout), _records(runs["ddp"].stdout)
    assert [r["epoch"] for r in two] == [1, 2, 3]  # rank 0 alone prints: three records, not six
    # The global batch: as many weight updates per epoch as one process makes (7 of 64 images).
    assert [r["updates"] for r in two] == [r["updates"] for r in one] == [7, 14, 21]
    for a, b in zip(one, two):
        assert a["lr"] == b["lr"] == 0.003  # not rescaled
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    single, ddp = _weights(tmp / "single.safetensors"), _weights(tmp / "ddp.safetensors")
    assert _close(single, ddp)
    assert not _close(single, {k: v * 1.001 for k, v in ddp.items()})  # the tolerance sees a 0.1% change
    _, meta = read_checkpoint(str(tmp / "ddp.safetensors"))
    assert meta.train_config["world_size"] == 2 and meta.train_config["batch_size"] == 64


def test_only_rank_0_writes_the_checkpoint_once_per_epoch(runs):
    writes = [line.split(" ", 1) for line in runs["writes"]]
    checkpoint = str(runs["tmp"] / "ddp.safetensors")
    assert [rank for rank, path in writes if path == checkpoint] == ["0", "0", "0"]
    assert {rank for rank, _ in writes} == {"0"}


def test_the_checkpoint_loads_in_one_process_and_validates_the_same(runs):
    path = runs["tmp"] / "ddp.safetensors"
    loaded = load_model(str(path))  # a plain module: no `module.` prefixes, nothing missing
    assert not any(k.startswith("module.") for k in loaded.model.state_dict())
    _validates_like_eval(path)


def test_resume_moves_from_one_process_to_torchrun_and_back(runs):
    """One epoch more for each 3-epoch run in the other mode: the one-process checkpoint under
    torchrun, the two-process one in one process; both continue like the other."""
    tmp = runs["tmp"]
    to_two, to_one = tmp / "to_two.safetensors", tmp / "to_one.safetensors"
    to_two.write_bytes((tmp / "single.safetensors").read_bytes())
    to_one.write_bytes((tmp / "ddp.safetensors").read_bytes())
    two = _torchrun("train", "--resume", to_two, "--epochs", "4", "-q", "--format", "jsonl")
    assert two.returncode == 0, two.stderr
    one = _cnntools("train", "--resume", to_one, "--epochs", "4", "-q", "--format", "jsonl")
    assert one.returncode == 0, one.stderr
    for result, path in ((two, to_two), (one, to_one)):
        assert [(r["epoch"], r["updates"]) for r in _records(result.stdout)] == [(4, 28)]
        _, meta = read_checkpoint(str(path))
        assert [r["epoch"] for r in meta.history] == [1, 2, 3, 4]
    assert _records(two.stdout)[0]["val_loss"] == pytest.approx(_records(one.stdout)[0]["val_loss"], rel=1e-4)
    assert _close(_weights(to_two), _weights(to_one))
    assert not _close(_weights(to_two), _weights(tmp / "single.safetensors"))


def _children(pid: int) -> dict[int, int]:
    """{RANK: pid} of the processes `pid` started (read from /proc)."""
    ranks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
                continue
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                ranks[int(item[5:])] = int(entry)
    return ranks


def _validates_like_eval(path) -> None:
    """The last record stored with a --keep last checkpoint equals `eval --split val` of it."""
    result = _cnntools("eval", path, "--split", "val", "--precision", "fp32", "--format", "json", "-q")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)["models"][0]
    last = read_checkpoint(str(path))[1].history[-1]
    # 41 validation images split 21/20 between the ranks: each counted once.
    assert model["images"] == 41
    assert model["accuracy"] == pytest.approx(last["val_acc"], abs=1e-12)
    assert model["loss"] == pytest.approx(last["val_loss"], rel=1e-6)


def test_a_rank_that_dies_stops_the_job_with_one_line(tmp_path):
    """Also: with BatchNorm, whose running statistics each rank updates from its own share of
    the batch, validation still equals a one-process eval of the checkpoint (rank 0's buffers)."""
    path = tmp_path / "k.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnntools", "train", "--nproc", "2", *RUN, "--batchnorm", "--epochs", "1000", "-o", path],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        assert json.loads(proc.stdout.readline())["epoch"] == 1  # training is under way
        ranks = _children(proc.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - killed < 20
    assert proc.returncode == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: rank 1 ") and "SIGKILL" in lines[0], stderr
    _validates_like_eval(path)


def test_ctrl_c_stops_every_rank_at_the_same_batch_with_a_resumable_checkpoint(tmp_path):
    from cnntools.checkpoint import resume_state

    out = tmp_path / "int.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnntools", "train", "--nproc", "2", *RUN, "--epochs", "1000", "-o", out],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        assert json.loads(proc.stdout.readline())["epoch"] == 1
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends: torchrun's agent passes it to the ranks
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "Interrupted."  # -q: rank 0's note on the checkpoint is silenced, nothing else
    state = resume_state(*read_checkpoint(str(out)))
    assert state["epoch"] >= 1 and state["updates"] == 7 * state["epoch"] + state["batch"]


def test_a_missing_rendezvous_is_one_line(tmp_path):
    bare = _cnntools("train", "--epochs", "1", env=_env(RANK="1", WORLD_SIZE="2"))
    assert bare.returncode == 1
    assert bare.stderr.startswith("Error: ") and bare.stderr.count("\n") == 1 and "MASTER_ADDR" in bare.stderr
    # Rank 0 of two, and nobody else comes: the wait ends after --dist-timeout, in one line.
    started = time.monotonic()
    alone = _cnntools("train", *RUN, "--epochs", "1", "--dist-timeout", "1", "-o", tmp_path / "x.safetensors",
                      env=_env(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())))
    assert time.monotonic() - started < 60
    assert alone.returncode == 1
    assert alone.stderr.startswith("Error: could not join") and alone.stderr.count("\n") == 1, alone.stderr
    assert not (tmp_path / "x.safetensors").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--nproc", "2", "--batch-size", "33"], {}, "--batch-size 33 is the global batch"),
        (["--nproc", "0"], {}, "--nproc must be at least 1"),
        (["--nproc", "2", "--resume", "-"], {}, "--resume takes a file"),
        (["--nproc", "2"], {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "under torchrun leave it out"),
    ],
)
def test_nproc_usage_errors_before_anything_starts(cli, args, env, message):
    result = cli("train", *args, "--epochs", "1", env=env)
    assert result.exit_code == 2  # usage errors
    assert result.stderr.startswith("Error: ") and message in result.stderr


def test_the_launcher_reports_the_root_cause():
    from cnntools.training.distributed import describe_failure

    class Failure:
        def __init__(self, exitcode, message="", own=None, timestamp=0, pid=10):
            self.exitcode, self.message, self.timestamp, self.pid = exitcode, message, timestamp, pid
            self.error_file_data = {"message": message, "cnntools": own} if own is not None else {}

        def signal_name(self):
            return signal.Signals(-self.exitcode).name if self.exitcode < 0 else "<N/A>"

    lost = Failure(1, "lost contact with the other processes", {"secondary": True})
    assert describe_failure({0: lost, 1: Failure(-9)}).startswith("rank 1 (pid 10) was killed by SIGKILL")
    assert describe_failure({0: Failure(-15), 1: Failure(1, "disk full", {"secondary": False}, timestamp=5)}) == "rank 1: disk full"
    same = Failure(1, "no such dataset", {"secondary": False})
    assert describe_failure({0: same, 1: same}) == "no such dataset"
    assert describe_failure({1: lost}) == "rank 1: lost contact with the other processes"
    # rank 0 caught the launcher's SIGTERM and exited 143 before rank 1's SIGKILL was noticed
    assert describe_failure({0: Failure(143, timestamp=1), 1: Failure(-9, timestamp=2)}).startswith("rank 1 (pid 10) was killed by SIGKILL")
    assert describe_failure({0: Failure(143, timestamp=1), 1: Failure(2, timestamp=2)}).startswith("rank 1 (pid 10) exited with status 2")
