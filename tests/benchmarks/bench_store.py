"""Data at any size (issue 11): memory flat in N, first decode, training from the store, threads.

    python tests/benchmarks/bench_store.py [--cases memory,decode,train,threads] [--sizes 1000,4000]
    python tests/benchmarks/bench_store.py --issue-sizes     # the issue's 5,000 and 20,000 images
    python tests/benchmarks/bench_store.py --cases bigger --issue-sizes   # a store 4x the memory cap

Cases (each prints JSON lines; ratios are of medians over interleaved rounds):

- `memory`: generated folders of 224×224 JPEGs (make_jpeg_folder.py) of two sizes; for each,
  `dataset-stats` (first run: decodes into the store), `train --arch compact-cnn --image-size
  128 --epochs 1` and `eval` of the result, each in a fresh child whose /proc/PID/status is
  sampled every 20 ms: the peak RssAnon (the process's own memory) and RssFile (pages of the
  mapped store, the page cache's). Target: every peak ≤ 1.5 GB, and the larger folder's peak
  ≤ 1.15× the smaller's. The store's size over the peak RssAnon shows how far the data
  outgrows the process (the "bigger than RAM" case: the pixels live in the page cache).
- `bigger`: the larger folder's 224-px store (the one `dataset-stats` decodes) is 4x the memory
  the trainer may use: `train --arch lenet --image-size 224 --epochs 1 --batch-size 16` runs in a child memory
  cgroup capped at a quarter of the store, page cache included (its pages evicted first, so
  each page read is charged to the child); where no cgroup can be made, RLIMIT_DATA caps the
  anonymous memory instead. Target: the epoch completes.
- `decode`: first decode of a folder of 400×300 JPEGs to 128×128 by cnntools (empty cache)
  against torchvision's ImageFolder + Resize((128, 128)) + PILToTensor through a
  DataLoader(batch_size=64, num_workers=2) (target ≥ 1.5×); and of 224×224 files at 224
  (no DCT scaling possible; target ≥ 1.0×). Also cnntools' decoder on threads vs processes.
- `train`: steps per second of the same model over the same images, batches gathered from a
  mapped store vs from a tensor in RAM (page cache warm): LeNet at 32 px and compact-cnn at
  128 px (target ≥ 0.9×).
- `checksum`: what checking the store costs (issue 25): a folder's store opened afresh, so every
  chunk's CRC-32 is still to be checked, against the same mapped pixels read without checks
  (page cache warm). A training epoch (LeNet at 128 px, flip+crop: the cheapest model on large
  pixels, where the checks weigh most; target: ≤ 5% more time) and dataset-stats' full pass (`channel_stats`, target ≤ 15%), plus the open (header,
  digest, labels and meta checked) and the CRC-32 rate.
- `threads`: the thread count chosen under `taskset -c 0` (target 1); `cnntools train` on
  digits with default threads vs `--threads 1` and `--threads 2`, on the machine as it is
  and with one busy competing process per core (target: default ≤ 1.5× the best under
  contention, ≤ 1.05× idle), plus the default with OpenMP spin-waiting (OMP_WAIT_POLICY=ACTIVE,
  torch's own default behaviour before) to show the cause.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, emit, machine
from make_jpeg_folder import make_folder

GB = 1e9


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmRSS"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def sampled_run(argv: list[str], env: dict, cwd: str, preexec_fn=None, check: bool = True) -> dict:
    """Run a child; peak RssAnon / RssFile / VmRSS sampled from /proc every 20 ms, wall time.

    `preexec_fn` runs in the child before it starts (to put it under a limit). A failing child
    stops the benchmark, or with `check=False` comes back as `exit` and the tail of `stderr`.
    """
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec_fn)
    err_chunks = []
    reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        for key, value in _status(proc.pid).items():
            peaks[key] = max(peaks[key], value)
        time.sleep(0.02)
    reader.join()
    wall = time.perf_counter() - start
    stderr = b"".join(err_chunks).decode()
    if proc.returncode != 0 and check:
        raise SystemExit(f"{' '.join(argv)} failed:\n{stderr[-3000:]}")
    record = {"peak_anon_mb": round(peaks["RssAnon"] / 1e6, 1), "peak_file_mb": round(peaks["RssFile"] / 1e6, 1),
              "peak_rss_mb": round(peaks["VmRSS"] / 1e6, 1), "wall_s": round(wall, 1)}
    if not check:
        record["exit"] = proc.returncode
        if proc.returncode != 0:
            record["stderr"] = stderr[-600:]
    return record


# ---------------------------------------------------------------------------- memory


def case_memory(work: Path, sizes: list[int]) -> None:
    results = {}
    for n in sizes:
        folder = make_folder(work / f"f{n}", n, 224, 224, classes=5)
        cache = work / f"cache{n}"
        shutil.rmtree(cache, ignore_errors=True)
        env = _env(CNNTOOLS_CACHE=str(cache))
        cli = [sys.executable, "-m", "cnntools"]
        steps = {
            "dataset-stats (decodes)": [*cli, "dataset-stats", "--data", str(folder), "-q"],
            "train compact-cnn 128 px, 1 epoch": [*cli, "train", "--data", str(folder), "--arch", "compact-cnn", "--image-size",
                                                  "128", "--epochs", "1", "-o", str(work / f"m{n}.safetensors"), "-q"],
            "eval": [*cli, "eval", str(work / f"m{n}.safetensors"), "--data", str(folder), "--split", "train", "-q"],
        }
        for step, argv in steps.items():
            record = sampled_run(argv, env, str(work))
            store_mb = sum(p.stat().st_size for p in cache.glob("*.safetensors")) / 1e6
            results[(n, step)] = record
            emit({"benchmark": "store_memory", "case": step, "images": n, "store_mb": round(store_mb, 1),
                  "store_over_anon": round(store_mb / max(record["peak_anon_mb"], 1), 2), "target_mb": 1500, "meets_target": record["peak_anon_mb"] <= 1500,
                  **record, **machine()})
    small, large = min(sizes), max(sizes)
    for step in ("dataset-stats (decodes)", "train compact-cnn 128 px, 1 epoch", "eval"):
        a, b = results[(small, step)]["peak_anon_mb"], results[(large, step)]["peak_anon_mb"]
        emit({"benchmark": "store_memory_growth", "case": step, "ratio": f"peak RssAnon {large} / {small} images",
              "value": round(b / a, 3), "target": 1.15, "meets_target": b / a <= 1.15})


# ---------------------------------------------------------------------------- bigger than RAM


def _memory_cgroup() -> Path | None:
    """This process's memory cgroup folder (v1 `memory` or v2), if it can hold a child; else None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
        elif controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            folder = Path("/sys/fs/cgroup") / path.lstrip("/")
        else:
            continue
        if os.access(folder, os.W_OK):
            return folder
    return None


def _evict(path: Path) -> None:
    """Drop this file's pages from the page cache (only this file's, nothing system-wide), so
    that the limited child has to read them again and they are charged to its cgroup."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def case_bigger(work: Path, n: int, arch: str, factor: float = 4.0) -> None:
    """Train an epoch on a store 4x larger than all the memory the process may use.

    A child memory cgroup of this process's own (removed afterwards) caps the trainer's
    memory, page cache included, at a quarter of the store; the store's pages are evicted
    first so that every page the trainer reads is charged to it. Without a writable cgroup
    (containers), RLIMIT_DATA caps the anonymous memory instead (the mapped store is file-backed
    and not counted by it).
    """
    import resource

    folder = make_folder(work / f"f{n}", n, 224, 224, classes=5)
    cache = work / f"cache{n}"
    env = _env(CNNTOOLS_CACHE=str(cache))
    cli = [sys.executable, "-m", "cnntools"]
    subprocess.run([*cli, "dataset-stats", "--data", str(folder), "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
    stores = {p: p.stat().st_size for p in cache.glob("*.safetensors")}
    store = max(stores, key=stores.get)  # the 224-px store (the median size)
    limit = int(stores[store] / factor)
    for p in stores:
        _evict(p)
    cgroup = _memory_cgroup()
    group = None
    if cgroup is not None:
        group = cgroup / f"cnntools-bench-{os.getpid()}"
        group.mkdir()
        v1 = (group / "memory.limit_in_bytes").exists()
        (group / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(str(limit))

    def enter_limit():
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    argv = [*cli, "train", "--data", str(folder), "--arch", arch, "--image-size", "224", "--epochs", "1", "--batch-size", "16",
            "-o", str(work / "bigger.safetensors"), "-q"]
    try:
        run = sampled_run(argv, env, str(work), preexec_fn=enter_limit, check=False)
        record = {"benchmark": "store_bigger_than_memory", "case": f"train {arch} 224 px, 1 epoch, {n} images",
                  "store_mb": round(stores[store] / 1e6, 1), "limit_mb": round(limit / 1e6, 1),
                  "limit_kind": "memory cgroup (page cache included)" if group is not None else "RLIMIT_DATA (anonymous memory)",
                  **run}
        if group is not None:
            usage = group / ("memory.max_usage_in_bytes" if v1 else "memory.peak")
            if usage.exists():
                record["cgroup_peak_mb"] = round(int(usage.read_text()) / 1e6, 1)
            if v1:
                record["times_the_limit_was_hit"] = int((group / "memory.failcnt").read_text())
    finally:
        if group is not None:
            group.rmdir()  # (the child has exited: the group is empty)
    record["store_over_limit"] = round(stores[store] / limit, 2)
    record["meets_target"] = run["exit"] == 0 and stores[store] >= 4 * limit
    emit({**record, **machine()})


# ---------------------------------------------------------------------------- decode


def _torchvision_pass(folder: Path, size: int) -> int:
    import torch
    from torchvision import datasets, transforms

    data = datasets.ImageFolder(str(folder), transform=transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()]))
    loader = torch.utils.data.DataLoader(data, batch_size=64, num_workers=2)
    n = 0
    for x, _ in loader:
        n += len(x)
    return n


def _cnntools_decode(folder: Path, size: int, cache: Path) -> int:
    from cnntools.data.folders import FolderSource

    shutil.rmtree(cache, ignore_errors=True)
    os.environ["CNNTOOLS_CACHE"] = str(cache)
    source = FolderSource(folder, size)
    return len(source.load("train"))


def _decode_one(job):
    from cnntools.data.images import decode_file, pil

    pil()
    path, size = job
    return decode_file(path, "RGB", (size, size)).shape


def _pool_pass(folder: Path, size: int, kind: str) -> int:
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from cnntools.core.runtime import usable_cores

    files = sorted(folder.glob("*/*.jpg"))
    pool_cls = ThreadPoolExecutor if kind == "threads" else ProcessPoolExecutor
    with pool_cls(usable_cores()) as pool:
        return len(list(pool.map(_decode_one, [(f, size) for f in files], chunksize=16)))


def case_decode(work: Path, n: int, repeats: int) -> None:
    for (width, height), size, target in (((400, 300), 128, 1.5), ((224, 224), 224, 1.0)):
        folder = make_folder(work / f"d{width}x{height}-{n}", n, width, height, classes=5)
        rates = {"cnntools": [], "torchvision": []}
        for r in range(repeats + 1):  # the first round only imports and warms up
            for name, fn in (("cnntools", lambda: _cnntools_decode(folder, size, work / "decode-cache")),
                             ("torchvision", lambda: _torchvision_pass(folder, size))):
                start = time.perf_counter()
                count = fn()
                if r:
                    rates[name].append(count / (time.perf_counter() - start))
        a, b = statistics.median(rates["cnntools"]), statistics.median(rates["torchvision"])
        emit({"benchmark": "store_decode", "case": f"{n} JPEGs {width}x{height} -> {size}", "ratio": "cnntools / torchvision",
              "value": round(a / b, 3), "target": target, "meets_target": a / b >= target,
              "cnntools_per_s": round(a, 1), "torchvision_per_s": round(b, 1), "repeats": repeats, **machine()})
        pools = {"threads": [], "processes": []}
        for _ in range(repeats):
            for kind in pools:
                start = time.perf_counter()
                count = _pool_pass(folder, size, kind)
                pools[kind].append(count / (time.perf_counter() - start))
        t, p = statistics.median(pools["threads"]), statistics.median(pools["processes"])
        emit({"benchmark": "store_decode_pool", "case": f"{width}x{height} -> {size}", "ratio": "threads / processes",
              "value": round(t / p, 3), "threads_per_s": round(t, 1), "processes_per_s": round(p, 1)})


# ---------------------------------------------------------------------------- training from the store


def case_train(work: Path, n: int, repeats: int, archs: list[str]) -> None:
    import torch

    from cnntools.data import BatchLoader, load_split, parse_augment
    from cnntools.data.imageset import ImageSet
    from cnntools.models import create_model

    folder = make_folder(work / f"t{n}", n, 160, 160, classes=5)
    os.environ["CNNTOOLS_CACHE"] = str(work / "train-cache")
    for arch, size, batch in (("lenet", 32, 128), ("compact-cnn", 128, 64)):
        if arch not in archs:
            continue
        mapped = load_split(str(folder), "train", image_size=size)
        in_ram = ImageSet(images=mapped.images.clone(), labels=mapped.labels.clone(), classes=mapped.classes)
        model = create_model(arch, in_channels=3, image_size=size, num_classes=5)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        augment = parse_augment("flip,crop:4")
        steps = max(4, min(40, n // batch))

        def run(data, epoch):
            loader = BatchLoader(data, batch_size=batch, seed=0, augment=augment, mean=[0.5] * 3, std=[0.5] * 3, drop_last=True)
            loader.set_epoch(epoch)
            done = 0
            for i, (x, y) in enumerate(loader):
                if i == steps:
                    break
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                opt.step()
                done += len(x)
            return done

        for data in (mapped, in_ram):  # warm the page cache and the allocator
            run(data, 0)
        rates = {"store": [], "ram": []}
        for r in range(repeats):
            for name, data in (("store", mapped), ("ram", in_ram)):
                start = time.perf_counter()
                count = run(data, r + 1)
                rates[name].append(count / (time.perf_counter() - start))
        a, b = statistics.median(rates["store"]), statistics.median(rates["ram"])
        emit({"benchmark": "store_train", "case": f"{arch} {size} px, batch {batch}, flip+crop", "ratio": "store / RAM tensor",
              "value": round(a / b, 3), "target": 0.9, "meets_target": a / b >= 0.9, "store_per_s": round(a, 1),
              "ram_per_s": round(b, 1), "repeats": repeats, **machine()})


# ---------------------------------------------------------------------------- checksums


def case_checksum(work: Path, n: int, repeats: int) -> None:
    import zlib

    import numpy as np
    import torch

    from cnntools.data import BatchLoader, channel_stats, load_split, parse_augment
    from cnntools.data.store import CHUNK_BYTES
    from cnntools.models import create_model

    folder = make_folder(work / f"k{n}", n, 160, 160, classes=5)
    os.environ["CNNTOOLS_CACHE"] = str(work / "checksum-cache")
    size, batch = 128, 64
    load_split(str(folder), "train", image_size=size)  # decodes once; later opens find the store

    def opened(checked: bool):
        start = time.perf_counter()
        data = load_split(str(folder), "train", image_size=size)  # a fresh open: no chunk checked yet
        seconds = time.perf_counter() - start
        if not checked:
            from dataclasses import replace

            plain = torch.from_numpy(data.images.checks.flat.reshape(tuple(data.images.shape)))
            data = replace(data, images=plain)
        return data, seconds

    # The cheapest model on the largest pixels: the checks' share of an epoch is at its highest.
    model = create_model("lenet", in_channels=3, image_size=size, num_classes=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    augment = parse_augment("flip,crop:4")

    def epoch(data) -> float:
        loader = BatchLoader(data, batch_size=batch, seed=0, augment=augment, mean=[0.5] * 3, std=[0.5] * 3)
        start = time.perf_counter()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        return time.perf_counter() - start

    def stats_pass(data) -> float:
        start = time.perf_counter()
        channel_stats(data)
        return time.perf_counter() - start

    store_bytes = opened(True)[0].images.checks.flat.nbytes
    for name, run, target in (("train epoch, lenet 128 px, batch 64, flip+crop", epoch, 0.05),
                              ("dataset-stats full pass (channel_stats)", stats_pass, 0.15)):
        run(opened(False)[0])  # warm the page cache and the allocator
        times = {True: [], False: []}
        opens = []
        for _ in range(repeats):
            for checked in (True, False):
                data, seconds = opened(checked)
                if checked:
                    opens.append(seconds)
                times[checked].append(run(data))
        a, b = statistics.median(times[True]), statistics.median(times[False])
        alone = []  # the checks by themselves (less noisy than a difference of two long runs)
        for _ in range(repeats):
            checks = opened(True)[0].images.checks
            start = time.perf_counter()
            checks.everything()
            alone.append(time.perf_counter() - start)
        emit({"benchmark": "store_checksum", "case": name, "images": n, "store_mb": round(store_bytes / 1e6, 1),
              "ratio": "checked / unchecked - 1", "value": round(a / b - 1, 4), "target": target, "meets_target": a / b - 1 <= target,
              "checked_s": round(a, 3), "unchecked_s": round(b, 3), "checks_alone_s": round(statistics.median(alone), 4),
              "checks_alone_share": round(statistics.median(alone) / b, 4), "open_s": round(statistics.median(opens), 4),
              "repeats": repeats, **machine()})
    flat = np.frombuffer(os.urandom(64 * CHUNK_BYTES), dtype=np.uint8)
    start = time.perf_counter()
    for i in range(0, flat.size, CHUNK_BYTES):
        zlib.crc32(flat[i : i + CHUNK_BYTES])
    emit({"benchmark": "store_checksum_rate", "case": f"zlib.crc32 over {CHUNK_BYTES >> 20} MiB chunks, one thread",
          "gb_per_s": round(flat.size / (time.perf_counter() - start) / GB, 2), **machine()})


# ---------------------------------------------------------------------------- threads


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def _timed_train(work: Path, threads: str | None, env_extra: dict) -> float:
    argv = [sys.executable, "-m", "cnntools", "train", "-o", str(work / "digits.safetensors"), "-q"]
    if threads:
        argv += ["--threads", threads]
    start = time.perf_counter()
    subprocess.run(argv, env=_env(**env_extra), cwd=str(work), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def case_threads(work: Path, repeats: int) -> None:
    code = "from cnntools.core import runtime; print(runtime.default_threads())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    chosen = out.stdout.strip()
    emit({"benchmark": "threads_taskset", "case": "taskset -c 0: default threads", "value": chosen, "target": "1",
          "meets_target": chosen == "1"})
    cores = len(os.sched_getaffinity(0))
    variants = {"default": (None, {}), "--threads 1": ("1", {}), "--threads 2": ("2", {}),
                "default, OMP_WAIT_POLICY=ACTIVE": (None, {"OMP_WAIT_POLICY": "ACTIVE"})}
    for condition in ("as is", f"{cores} busy competitors"):
        stop = multiprocessing.Event()
        spinners = []
        if condition != "as is":
            spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(cores)]
            for p in spinners:
                p.start()
        try:
            times = {name: [] for name in variants}
            for _ in range(repeats):
                for name, (threads, extra) in variants.items():
                    times[name].append(_timed_train(work, threads, extra))
        finally:
            stop.set()
            for p in spinners:
                p.join()
        med = {name: statistics.median(v) for name, v in times.items()}
        best = min(med["--threads 1"], med["--threads 2"])
        target = 1.05 if condition == "as is" else 1.5
        emit({"benchmark": "threads_train_digits", "case": condition, "ratio": "default / best of --threads 1, 2",
              "value": round(med["default"] / best, 3), "target": target, "meets_target": med["default"] / best <= target,
              **{f"{name}_s": round(t, 1) for name, t in med.items()}, "load_average": os.getloadavg()[0], **machine()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="memory,decode,train,threads", help="any of memory, bigger, decode, train, threads, checksum")
    parser.add_argument("--sizes", default="1000,4000", help="folder sizes for the memory case")
    parser.add_argument("--issue-sizes", action="store_true", help="the issue's 5,000 and 20,000 images (needs ~4 GB of disk)")
    parser.add_argument("--decode-n", type=int, default=1000, help="images per folder in the decode case")
    parser.add_argument("--train-n", type=int, default=512, help="images in the train case's folder")
    parser.add_argument("--checksum-n", type=int, default=1000, help="images in the checksum case's folder")
    parser.add_argument("--train-archs", default="lenet,compact-cnn", help="which of lenet (32 px), compact-cnn (128 px)")
    parser.add_argument("--bigger-arch", default="lenet", help="the model trained on the store 4x the memory limit")
    parser.add_argument("--bigger-factor", type=float, default=4.0, help="the store's size over the memory limit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller folders and two rounds")
    parser.add_argument("--work", help="keep the generated folders here (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [5000, 20000] if args.issue_sizes else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.decode_n, args.train_n, args.checksum_n, args.repeats = [500, 2000], 200, 256, 400, 2
    work_ctx = tempfile.TemporaryDirectory(prefix="cnntools-store-") if not args.work else None
    work = Path(args.work or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        cases = args.cases.split(",")
        if "decode" in cases:
            case_decode(work, args.decode_n, args.repeats)
        if "train" in cases:
            case_train(work, args.train_n, args.repeats, args.train_archs.split(","))
        if "threads" in cases:
            case_threads(work, args.repeats)
        if "checksum" in cases:
            case_checksum(work, args.checksum_n, args.repeats)
        if "memory" in cases:
            case_memory(work, sizes)
        if "bigger" in cases:
            case_bigger(work, max(sizes), args.bigger_arch, args.bigger_factor)
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()


if __name__ == "__main__":
    main()
