"""Training on several processes: torchrun's environment, the process group, the local launcher.

`torchrun --nproc-per-node N -m cnntools train ...` starts N copies of the command with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment. `environment()`
reads them, `start()` joins the process group (gloo on CPU, NCCL on CUDA, one GPU per local
rank) with a timeout, so a peer that died or hangs ends the job with an error instead of
blocking it forever, and `stop()` leaves it. `peer_failures()` turns a broken collective into
one line. `launch_local()` is `cnntools train --nproc N`: the same command started through
torch's own launcher (`torch.distributed.run`, torchrun --standalone), the children's
failures reported as one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass

from cnntools.core.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, CnnError
from cnntools.core.job import LAUNCHED_ENV
from cnntools.output.emitter import first_line


DEFAULT_TIMEOUT = 300.0
_HOW_TO_START = "start distributed runs with torchrun --nproc-per-node N -m cnntools train ... (or cnntools train --nproc N)"


@dataclass(frozen=True)
class Rank:
    """This process's place in a distributed job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class PeerFailure(CnnError):
    """A collective failed because another process died, hung or was stopped.

    `secondary`: the cause is elsewhere; a launcher reporting one line prefers the failing
    process's own message to this one."""

    secondary = True


def environment() -> Rank | None:
    """The distributed job this process belongs to, from torchrun's variables; None when alone."""
    env = os.environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return None
    try:
        world_size = int(env.get("WORLD_SIZE", ""))
        rank = int(env.get("RANK", ""))
        local_rank = int(env.get("LOCAL_RANK") or 0)
        local_world_size = int(env.get("LOCAL_WORLD_SIZE") or world_size)
    except ValueError:
        raise CnnError(f"RANK and WORLD_SIZE must both be set to whole numbers; {_HOW_TO_START}") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise CnnError(f"RANK {rank} does not fit WORLD_SIZE {world_size}; {_HOW_TO_START}")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:
        raise CnnError(f"RANK and WORLD_SIZE are set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not, "
                       f"so there is no rendezvous to join; {_HOW_TO_START}")
    return Rank(rank, world_size, local_rank, local_world_size)


def quiet_native_logs(debug: bool) -> None:
    """Keep c10d's own log lines (socket retries with C++ stack frames) off stderr unless
    debugging: a failure is reported as one line. Works only before torch is imported."""
    if not debug:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")


def start(rank: Rank, device_spec: str, timeout: float = DEFAULT_TIMEOUT):
    """Join the process group: NCCL when training on CUDA (the GPU of LOCAL_RANK), gloo
    otherwise. Returns (device, backend). `timeout` seconds bound the wait for the other
    processes here and in every later collective."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from cnntools.core import runtime

    device = runtime.resolve_device(device_spec)
    if device.type == "mps":
        raise CnnError("distributed training runs on CPU (gloo) or CUDA (NCCL), not on mps; use --device cpu")
    if device.type == "cuda":
        if device.index is None:
            count = torch.cuda.device_count()
            if rank.local_rank >= count:
                raise CnnError(f"{rank.local_world_size} processes on this machine but {count} CUDA device(s): "
                               f"start at most {count} per machine")
            device = torch.device("cuda", rank.local_rank)
        elif rank.local_world_size > 1:
            raise CnnError(f"--device {device_spec} would put every process on one GPU; "
                           "use --device cuda (or auto): each process takes the GPU of its LOCAL_RANK")
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout),
                                device_id=device if device.type == "cuda" else None)
    except (RuntimeError, ValueError) as error:
        raise CnnError(f"could not join the other {rank.world_size - 1} process(es) at {where} "
                       f"within {timeout:g} s ({first_line(error)}); {_HOW_TO_START}, "
                       "and raise --dist-timeout if some start late") from None
    return device, backend


def stop() -> None:
    """Leave the process group (nothing when there is none)."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # A DistributedDataParallel model left in a reference cycle would be collected only
        # at interpreter exit, after the group is gone: gloo's threads then abort the process.
        gc.collect()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


@contextlib.contextmanager
def local_main_first(rank: Rank):
    """Inside: local rank 0 of every machine runs first (e.g. downloads), the others after it."""
    import torch.distributed as dist

    if rank.local_rank != 0:
        dist.barrier()
    yield
    if rank.local_rank == 0:
        dist.barrier()


@contextlib.contextmanager
def peer_failures(timeout: float):
    """Inside: a collective that breaks because another process died or hangs becomes one line."""
    try:
        yield
    except RuntimeError as error:
        if not _is_peer_error(error):
            raise
        text = first_line(error)
        if "timed out" in text.lower() or "timeout" in text.lower():
            raise PeerFailure(f"no answer from the other processes within {timeout:g} s "
                              f"(--dist-timeout); one of them failed or is stuck ({text})") from None
        raise PeerFailure(f"lost contact with the other processes ({text}); "
                          "one of them failed or was stopped") from None


def _is_peer_error(error: BaseException) -> bool:
    import torch.distributed as dist

    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return any(word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "broken pipe", "timed out"))


# ---------------------------------------------------------------------------- launcher


def launch_local(nproc: int, command: list[str], debug: bool = False) -> None:
    """Run `python -m cnntools COMMAND...` as `nproc` processes on this machine through
    torch's own launcher: exactly `torchrun --standalone --nproc-per-node NPROC -m cnntools
    COMMAND...`. A failed process stops the others (torchrun's monitor) and becomes one
    `CnnError` line here; the children leave error reporting to this process."""
    import logging

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from cnntools.core import runtime
    from cnntools.core.runtime import usable_cores

    if not debug:
        # torchrun's agent logs its own account of every failure; ours is the one line below.
        for name in ("torch", "torch.distributed"):
            for handler in logging.getLogger(name).handlers:
                handler.setLevel(logging.CRITICAL + 1)
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", LAUNCHED_ENV)}
    # torchrun would pin every process to 1 thread; sharing the cores is as safe and faster on CPU.
    # (An OMP_NUM_THREADS the user set is kept; --threads, when given, travels on the command line.)
    os.environ["OMP_NUM_THREADS"] = runtime.user_omp_threads() or str(max(1, usable_cores() // nproc))
    os.environ[LAUNCHED_ENV] = "1"
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "cnntools", *command]))
    except ChildFailedError as error:
        raise CnnError(describe_failure(error.failures)) from None
    except SignalException as error:
        if error.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise CnnError(f"the launcher was stopped by {error.sigval.name}; the processes were stopped") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def describe_failure(failures: dict) -> str:
    """One line for a failed job from torchelastic's {rank: ProcessFailure}: the root cause first.

    A process's own error (from the error file cnntools writes) beats a death by a signal,
    which beats a non-zero exit with no message; SIGTERM (the launcher stopping the others,
    whether it killed them or they caught it and exited 143) and "lost contact" errors only
    explain themselves when nothing else does."""

    def own(failure) -> dict:
        data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
        return data.get("cnntools") if isinstance(data.get("cnntools"), dict) else {}

    def priority(item) -> tuple:
        rank, failure = item
        if own(failure):
            kind = 4 if own(failure).get("secondary") else 0
        elif failure.exitcode < 0:
            kind = 3 if failure.signal_name() == "SIGTERM" else 1
        elif failure.exitcode in (EXIT_TERMINATED, EXIT_INTERRUPTED):
            kind = 3  # a process that caught the launcher's SIGTERM (or a Ctrl-C) and exited cleanly
        else:
            kind = 2
        return (kind, failure.timestamp, rank)

    rank, failure = min(failures.items(), key=priority)
    if own(failure):
        message = str(failure.message)
        shared = len(failures) > 1 and len({str(f.message) for f in failures.values()}) == 1
        return message if rank == 0 or shared else f"rank {rank}: {message}"
    if failure.exitcode < 0:
        name = failure.signal_name()
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"rank {rank} (pid {failure.pid}) was killed by {name}{hint}; the other processes were stopped"
    return f"rank {rank} (pid {failure.pid}) exited with status {failure.exitcode}; the other processes were stopped"

