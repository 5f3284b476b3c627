"""Devices, precision, seeds and CPU threads. Imports torch only inside its functions."""

from __future__ import annotations

import math
import os
import random
import re

from cnntools.core.errors import CnnError, UsageError

THREADS_ENV = "CNNTOOLS_THREADS"
_threads: int | None = None  # what --threads (or its default) resolved to in this process
_user_omp: str | None = os.environ.get("OMP_NUM_THREADS")  # as the user started us


def cgroup_cpu_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 `cpu.max`, v1
    `cpu.cfs_quota_us / cpu.cfs_period_us`), the tightest along its path; None when unlimited."""
    try:
        with open(proc_cgroup, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2: one unified hierarchy
            bases = [root]
            files = ("cpu.max",)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            bases = [os.path.join(root, controllers), os.path.join(root, "cpu,cpuacct"), os.path.join(root, "cpu")]
            files = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        for base in dict.fromkeys(bases):
            parts = [p for p in path.split("/") if p]
            # Inside a container the cgroup root is the container's own: try the full path and its ancestors.
            for depth in range(len(parts), -1, -1):
                folder = os.path.join(base, *parts[:depth])
                limit = _read_quota(folder, files)
                if limit is not None:
                    limits.append(limit)
    return min(limits) if limits else None


def _read_quota(folder: str, files: tuple[str, ...]) -> float | None:
    try:
        texts = []
        for name in files:
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                texts.append(handle.read().split())
    except OSError:
        return None
    try:
        if len(files) == 1:  # v2 "QUOTA PERIOD" or "max PERIOD"
            quota, period = texts[0][0], texts[0][1]
        else:
            quota, period = texts[0][0], texts[1][0]
        if quota == "max" or int(quota) <= 0 or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (IndexError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may actually use: its CPU affinity, capped by the cgroup CPU quota
    (rounded up: a quota of 1.5 cores keeps two threads busy)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return max(1, cores)


def default_threads() -> int:
    """The default of --threads: $CNNTOOLS_THREADS, else an OMP_NUM_THREADS the user set (as
    torch honours it; not torchrun's own 1), else `usable_cores()` shared among the processes
    torchrun started on this machine (its LOCAL_WORLD_SIZE)."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = (os.environ.get(name, "") if name == THREADS_ENV else _user_omp or "").strip()
        if not value or (name == "OMP_NUM_THREADS" and _torchruns_own_default(value)):
            continue
        try:
            threads = int(value)
        except ValueError:
            raise CnnError(f"{name}='{value}': expected a number of threads") from None
        if threads < 1:
            raise CnnError(f"{name} must be at least 1")
        return threads
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, usable_cores() // local)


def _torchruns_own_default(value: str) -> bool:
    """OMP_NUM_THREADS=1 in a process torchrun started with others on this machine: torchrun
    sets that itself when the variable is unset (with a warning that it is a guess), so it is
    not the user's choice. To pin ranks to one thread, use CNNTOOLS_THREADS=1 or --threads 1."""
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return False
    return value == "1" and local > 1 and "TORCHELASTIC_RUN_ID" in os.environ


def prepare_threads() -> None:
    """Set OpenMP's environment before torch loads it (call before the first `import torch`).

    OpenMP threads that finish a parallel region spin for a while before they sleep; with
    other busy processes on the same cores that spinning steals the time the working thread
    needs, and small models run several times slower. PASSIVE makes them sleep; a short spin
    first (GNU OpenMP's GOMP_SPINCOUNT, 100,000 rounds: tens of microseconds, against its
    default 300,000) catches the next operator of the same step without a wake-up, which a
    small model's step is made of: the README's digits training ran its epochs in 6.8 s instead
    of 10.9 s with PASSIVE alone at idle, and 3.8 s instead of 5.8 s (5 epochs) beside two busy
    processes. Values the user set are kept (an OMP_WAIT_POLICY of their own keeps its spin).
    """
    global _user_omp
    _user_omp = os.environ.get("OMP_NUM_THREADS")
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ.setdefault("GOMP_SPINCOUNT", "100000")


def use_threads(threads: int | None = None) -> int:
    """Run torch on `threads` CPU threads (None: `default_threads()`); returns the number.

    When torch is not imported yet only the environment is set (torch reads it on import),
    so commands that end up not needing torch do not pay for importing it.
    """
    import sys

    global _threads
    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise UsageError(f"--threads {threads}: use 1 or more")
    _threads = threads
    return_large_blocks()
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    return threads


MMAP_THRESHOLD = 4 * 2**20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def return_large_blocks() -> None:
    """Make glibc's malloc give every block of 4 MiB or more its own mapping, returned to the
    system when freed.

    By default glibc raises that threshold each time such a block is freed (up to 32 MiB), so
    batches of activations end up in the heaps of torch's OpenMP threads, which fragment and
    keep growing pass after pass: `eval` over 4,000 images of 128 px peaked 1.5x higher than
    over 1,000. With a fixed threshold the process stays flat (tests/benchmarks/bench_store.py).

    Fixing the threshold also stops glibc from raising the trim threshold with it (to twice
    the mmap threshold), leaving the 128 KiB default: every free at the top of a heap then
    handed its pages back and the next step faulted them in again, which made a small model's
    training step 12% slower (simple-cnn at 16 px, batch 32: 5.8 against 5.1 ms). The trim
    threshold is set to what glibc's own adjustment would give, 8 MiB: still a bound per heap.
    Nothing happens on other C libraries; MALLOC_MMAP_THRESHOLD_ set by the user wins.
    """
    global _heap_bounded
    if _heap_bounded or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    _heap_bounded = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
            libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_heap_bounded = False


def user_omp_threads() -> str | None:
    """OMP_NUM_THREADS as it was when this process started (before `use_threads` set it)."""
    return _user_omp


def thread_count() -> int:
    """The CPU threads this run uses (what `use_threads` chose, else the default)."""
    return _threads if _threads is not None else default_threads()


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(spec: str = "auto"):
    """`auto` picks cuda, then mps, then cpu; an unavailable device is a clear error."""
    import torch

    spec = spec.strip().lower()
    if not _DEVICE_RE.match(spec):
        raise CnnError(f"unknown device '{spec}': use auto, cpu, cuda, cuda:N or mps")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CnnError(f"device '{spec}' asked for but CUDA is not available here; use --device cpu or auto")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise CnnError(f"device '{spec}' does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    if spec == "mps" and not _mps_available():
        raise CnnError("device 'mps' asked for but Apple MPS is not available here; use --device cpu or auto")
    return torch.device(spec)


def module_device(model):
    """The device a model's weights are on (its first parameter's, else its first buffer's;
    the CPU for a model that holds neither)."""
    import torch

    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def cpu_has_native_bf16() -> bool:
    """True when the CPU has AMX or AVX512-BF16: elsewhere bf16 is several times slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


def resolve_precision(precision: str, device) -> str:
    """The precision to run at: `fp32`, `bf16` or `fp16`.

    `auto` chooses mixed precision only where the hardware runs it natively: fp16 AMP on
    CUDA (bf16 where the GPU supports it), bf16 on CPUs with AMX/AVX512-BF16, fp32 otherwise.
    """
    import torch

    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise UsageError("--precision fp16 is not supported on CPU; use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def autocast(device, precision: str):
    """The autocast context for a resolved precision (a no-op context for fp32)."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def deterministic_algorithms(enabled: bool):
    """A context in which PyTorch must use deterministic algorithms (a no-op when not `enabled`).

    Switches on `torch.use_deterministic_algorithms` (ops without a deterministic version then
    raise instead of silently varying), cuDNN's deterministic mode without autotuning, and
    the cuBLAS workspace setting CUDA needs for it; restores the previous settings after.
    """
    import contextlib

    import torch

    if not enabled:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def scope():
        cudnn = torch.backends.cudnn
        previous = (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        cudnn.deterministic, cudnn.benchmark = True, False
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous[0])
            cudnn.deterministic, cudnn.benchmark = previous[1], previous[2]

    return scope()


def available_memory() -> int | None:
    """Bytes of RAM this process can still get (Linux MemAvailable, capped by a cgroup limit); None if unknown."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),):
        try:
            with open(limit_file, encoding="ascii") as a, open(usage_file, encoding="ascii") as b:
                limit, usage = a.read().strip(), int(b.read().strip())
            if limit != "max":
                avail = min(avail, int(limit) - usage) if avail is not None else int(limit) - usage
        except (OSError, ValueError):
            pass
    return avail


def check_allocation(nbytes: int, what: str, share: float = 1.0) -> None:
    """Refuse, as one line, an allocation derived from input that the machine cannot give.

    Called before the allocation, with an estimate of the bytes it needs: a one-line error
    beats a MemoryError or the kernel's OOM killer halfway through. `share`: the part of the
    available memory this allocation may take (0.5 for data that a model must still run beside).
    """
    avail = available_memory()
    if avail is not None and nbytes > avail * share:
        part = "the" if share >= 1 else "half the" if share == 0.5 else f"{share:.0%} of the"
        raise CnnError(f"{what} needs about {human_bytes(nbytes)} of memory, more than {part} {human_bytes(avail)} available")


def human_bytes(nbytes: float) -> str:
    """1536 → "1.5 KiB": a size for people."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""
