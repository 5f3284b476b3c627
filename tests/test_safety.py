"""Nothing is lost, nothing runs that should not: atomic writes under kill -9, SIGTERM during
train, exact resume, no network without --download, --deterministic, NaN/inf gradients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cnntools.checkpoint import load_model, read_checkpoint, resume_state
from train_helpers import checkpoint_weights as _weights, same_weights as _same_weights

# simple-cnn on 8x8 digits in fp32 on one thread: fast and bit-for-bit repeatable.
FAST = ["--arch", "simple-cnn", "--image-size", "8", "--precision", "fp32", "--device", "cpu", "--augment", "crop:1",
        "--opt", "sgd", "--lr", "0.05", "--schedule", "cosine", "--seed", "3", "--batch-size", "64"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _start(args: list[str], tmp_path: Path, driver: str | None = None) -> subprocess.Popen:
    """`cnntools ARGS` in a subprocess (optionally behind a driver script that patches it first)."""
    env = {**os.environ, **ONE_THREAD, "NO_COLOR": "1", "CNNTOOLS_DEBUG": ""}
    command = [sys.executable, "-m", "cnntools", *args] if driver is None else [sys.executable, "-c", driver, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ---------------------------------------------------------------------------- atomic writes

# Runs `cnntools train` with the byte writer of every atomic write replaced: the second
# checkpoint write puts half its bytes into the temporary file, says so, and stalls there,
# so the parent's kill -9 lands mid-write every time.
STALL_SECOND_CHECKPOINT = textwrap.dedent(
    """
    import os, sys, time
    from cnntools.output import files
    from cnntools.cli.app import main

    real, seen = files._write_file, []

    def stalling(tmp, data):
        if tmp.endswith(".safetensors"):
            seen.append(tmp)
            if len(seen) == 2:
                with open(tmp, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                print("MID-WRITE", tmp, file=sys.stderr, flush=True)
                time.sleep(600)
        real(tmp, data)

    files._write_file = stalling
    sys.argv = ["cnntools", *sys.argv[1:]]
    main()
    """
)


def test_kill_9_mid_checkpoint_write_keeps_the_previous_checkpoint(cli, tmp_path, one_thread):
    out = tmp_path / "run.safetensors"
    proc = _start(["train", *FAST, "--epochs", "2", "-o", str(out), "-q", "--format", "jsonl"], tmp_path, STALL_SECOND_CHECKPOINT)
    try:
        line = proc.stderr.readline()
        assert line.startswith("MID-WRITE"), line + proc.stderr.read()
        temporary = Path(line.split(" ", 1)[1].strip())
        proc.send_signal(signal.SIGKILL)
        _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # The half-written temporary file is what the kill interrupted; the target is untouched.
    assert temporary.parent == tmp_path and temporary.exists() and temporary.name.startswith(".run.safetensors.")
    lm = load_model(str(out))
    assert lm.meta.arch_name == "simple-cnn" and [r["epoch"] for r in lm.meta.history] == [1]
    state = resume_state(*read_checkpoint(str(out)))
    assert (state["epoch"], state["batch"]) == (1, 0)
    # ... and it is the real epoch-1 checkpoint: resuming it ends where an uninterrupted run ends.
    straight = tmp_path / "straight.safetensors"
    # One thread, as in the killed child: the CLI would otherwise pick its own count, and sums
    # split across threads differ in the last bits.
    assert cli("train", *FAST, "--epochs", "2", "-o", straight, "-q", "--threads", "1").exit_code == 0
    resumed = cli("train", "--resume", out, "-q", "--threads", "1")
    assert resumed.exit_code == 0, resumed.stderr
    assert _same_weights(straight, out)


# Runs `cnntools train` and says READY at epoch 2, batch 5; from there each batch takes 0.2 s
# longer, so the parent's SIGTERM surely lands in the middle of epoch 2.
READY_IN_EPOCH_2 = textwrap.dedent(
    """
    import sys, time
    from cnntools import training
    from cnntools.cli.app import main

    real_run = training.Trainer.run

    def run(self):
        def on_batch(epoch, batch, loss):
            if (epoch, batch) == (2, 5):
                print("READY", file=sys.stderr, flush=True)
            if (epoch, batch) >= (2, 5):
                time.sleep(0.2)

        self.on_batch = on_batch
        return real_run(self)

    training.Trainer.run = run
    sys.argv = ["cnntools", *sys.argv[1:]]
    main()
    """
)


def test_sigterm_during_train_saves_resumable_checkpoint_exits_143_and_resumes_exactly(cli, tmp_path, one_thread):
    out = tmp_path / "term.safetensors"
    proc = _start(["train", *FAST, "--epochs", "3", "-o", str(out), "--format", "jsonl"], tmp_path, READY_IN_EPOCH_2)
    try:
        seen = []
        while not seen or seen[-1] != "READY\n":
            seen.append(proc.stderr.readline())
            assert seen[-1], "".join(seen)
        proc.send_signal(signal.SIGTERM)
        _, stderr = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "Terminated at epoch 2, batch" in stderr and f"--resume {out}" in stderr
    state = resume_state(*read_checkpoint(str(out)))
    assert state["epoch"] == 1 and 5 <= state["batch"] < 21  # in the middle of epoch 2
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary file left behind
    # One thread here too, as the child had: float sums in another order would differ in the
    # last bits (without xdist this process's default is every core).
    resumed = cli("train", "--resume", out, "-q", "--threads", "1")
    assert resumed.exit_code == 0, resumed.stderr
    straight = tmp_path / "straight.safetensors"
    assert cli("train", *FAST, "--epochs", "3", "-o", straight, "-q", "--threads", "1").exit_code == 0
    assert _same_weights(straight, out)


def test_atomic_write_fsyncs_and_replaces_only_complete_files(tmp_path, monkeypatch):
    from cnntools.output import files
    from cnntools.core.errors import CnnError

    target = tmp_path / "result.csv"
    target.write_text("old, complete\n")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    files.write_text(target, "new, complete\n")
    assert target.read_text() == "new, complete\n"
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".result.csv.")) and synced[1] == str(tmp_path)
    # A writer that fails half-way: the old file stays, no temporary file is left.
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            Path(tmp).write_text("half of the new")
            raise RuntimeError("the figure could not be drawn")
    assert target.read_text() == "new, complete\n" and sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]
    with pytest.raises(CnnError, match="is a folder"):
        files.write_text(tmp_path, "x")


def test_sigterm_unwinds_any_command_with_exit_143(cli):
    import typer

    from cnntools.core.errors import Terminated
    from cnntools.output.emitter import handle_errors

    def command():
        raise Terminated()

    with pytest.raises(typer.Exit) as stop:
        handle_errors(command)()
    assert stop.value.exit_code == 143


# ---------------------------------------------------------------------------- no network


@pytest.fixture
def no_network(monkeypatch):
    """Every way out of the machine raises (and is recorded)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_no_network_without_download(cli, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    for name in ("cifar10", "cifar100", "mnist", "fashion-mnist"):
        result = cli("dataset-stats", "--data", name, "--data-dir", tmp_path, "-q")
        assert result.exit_code == 1 and "--download" in result.stderr, result.stderr
    missing_weights = cli("eval", "torchvision:resnet18", "--image", tmp_path / "x.png", "-q")
    assert missing_weights.exit_code == 1 and "resnet18-f37072fd.pth" in missing_weights.stderr
    pretrained = cli("train", "--arch", "resnet18-imagenet", "--pretrained", "--epochs", "1", "-o", tmp_path / "m.safetensors", "-q")
    assert pretrained.exit_code == 1 and "Error: " in pretrained.stderr
    assert cli("dataset-stats", "--data", "digits", "-q", "--format", "json").exit_code == 0
    assert no_network == []
    # The guard is real: --download does try the network, and that ends in one clean line too.
    fetched = cli("dataset-stats", "--data", "mnist", "--data-dir", tmp_path, "--download", "-q")
    assert no_network and fetched.exit_code == 1
    assert fetched.stderr.strip().splitlines()[-1].startswith("Error: downloading mnist")


# ---------------------------------------------------------------------------- determinism and numerics


def test_deterministic_flag_switches_on_deterministic_algorithms(cli, tmp_path, small_trainer):
    trainer = small_trainer(epochs=1, deterministic=True)
    seen = []
    trainer.on_batch = lambda epoch, batch, loss: seen.append(
        (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark))
    assert not torch.are_deterministic_algorithms_enabled()
    trainer.run()
    assert seen and set(seen) == {(True, True, False)}
    assert not torch.are_deterministic_algorithms_enabled()  # switched back after the run
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        result = cli("train", *FAST, "--epochs", "1", "--deterministic", "-o", out, "-q", "--format", "jsonl")
        assert result.exit_code == 0, result.stderr
        record = json.loads(result.stdout.splitlines()[0])
        runs.append({k: v for k, v in record.items() if k not in ("seconds", "images_per_s")})
    assert runs[0] == runs[1]
    assert _same_weights(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert read_checkpoint(str(tmp_path / "a.safetensors"))[1].train_config["deterministic"] is True


def test_inf_gradient_with_finite_loss_stops_and_keeps_the_good_checkpoint(tmp_path, small_trainer):
    from cnntools.training import NonFiniteLoss

    out = tmp_path / "good.safetensors"
    trainer = small_trainer(out, epochs=3, keep="last")
    poison = {"on": False}
    snapshot = {}
    weight = trainer.model.classifier[-1].weight
    weight.register_hook(lambda grad: grad * float("inf") if poison["on"] else grad)

    def on_batch(epoch, batch, loss):
        if epoch == 1 and batch == trainer.steps_per_epoch:
            snapshot.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        poison["on"] = (epoch, batch) == (2, 2)  # the next batch (2, 3) gets an inf gradient

    trainer.on_batch = on_batch
    with pytest.raises(NonFiniteLoss, match=r"a gradient became (inf|nan) at epoch 2, batch 3 .*keeps the weights of epoch 1"):
        trainer.run()
    weights = _weights(out)
    assert all(torch.equal(weights[k], snapshot[k]) for k in weights)


def test_deterministic_without_a_deterministic_kernel_is_one_line(cli, tmp_path, monkeypatch):
    """CUDA has no deterministic adaptive_avg_pool2d backward (resnet18): PyTorch raises; we say it plainly."""
    from cnntools.training import Trainer

    def no_kernel(self):
        raise RuntimeError("adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set "
                           "'torch.use_deterministic_algorithms(True)'.\nmore text")

    monkeypatch.setattr(Trainer, "run", no_kernel)
    result = cli("train", *FAST, "--epochs", "1", "--deterministic", "-o", tmp_path / "m.safetensors", "-q")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: --deterministic: adaptive_avg_pool2d_backward_cuda does not have a deterministic")
