"""--threads and its default: the cores this process may use (affinity, cgroup v1/v2 quota)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnntools.core import runtime


def _cgroup(tmp_path: Path, proc_lines: str, files: dict[str, str]) -> tuple[str, str]:
    proc = tmp_path / "cgroup"
    proc.write_text(proc_lines)
    root = tmp_path / "fs"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return str(proc), str(root)


@pytest.mark.parametrize(
    "proc_lines, files, expected",
    [
        ("0::/\n", {"cpu.max": "200000 100000\n"}, 2.0),  # a container started with --cpus 2
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        ("0::/user.slice/job\n", {"user.slice/job/cpu.max": "150000 100000\n", "user.slice/cpu.max": "400000 100000\n"}, 1.5),
        ("0::/a/b\n", {"cpu.max": "50000 100000\n"}, 0.5),  # only the (container's) root is visible
        ("4:cpu,cpuacct:/docker/x\n", {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "300000\n",
                                      "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"}, 3.0),
        ("4:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
        ("1:memory:/x\n", {}, None),
    ],
)
def test_cgroup_cpu_limit_reads_v1_and_v2(tmp_path, proc_lines, files, expected):
    proc, root = _cgroup(tmp_path, proc_lines, files)
    assert runtime.cgroup_cpu_limit(proc, root) == expected


def test_usable_cores_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 2.5)
    assert runtime.usable_cores() == 3
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    assert runtime.usable_cores() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert runtime.usable_cores() == 1


def test_default_threads_env_and_torchrun_share(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    monkeypatch.setattr(runtime, "_user_omp", None)
    monkeypatch.delenv("CNNTOOLS_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert runtime.default_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert runtime.default_threads() == 2
    # torchrun's own OMP_NUM_THREADS=1 (set when the user left it unset) is not a choice ...
    monkeypatch.setattr(runtime, "_user_omp", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert runtime.default_threads() == 2
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert runtime.default_threads() == 1  # ... outside torchrun, 1 is the user's
    monkeypatch.setattr(runtime, "_user_omp", "3")
    assert runtime.default_threads() == 3
    monkeypatch.setenv("CNNTOOLS_THREADS", "5")
    assert runtime.default_threads() == 5
    monkeypatch.setenv("CNNTOOLS_THREADS", "lots")
    with pytest.raises(runtime.CnnError, match="CNNTOOLS_THREADS"):
        runtime.default_threads()


def test_threads_option_sets_torchs_threads(cli):
    import torch

    before = torch.get_num_threads()
    try:
        result = cli("dataset-stats", "--data", "fake:20,size=8", "--threads", "1", "--format", "json")
        assert result.exit_code == 0, result.stderr
        assert torch.get_num_threads() == 1
        bad = cli("eval", "x.safetensors", "--threads", "0")
        assert bad.exit_code == 2 and "--threads" in bad.stderr
    finally:
        torch.set_num_threads(before)


def _child_env(*without: str) -> dict:
    """This process's environment without the named variables, with this checkout first on
    PYTHONPATH: for a child that sets up its threads or heap from scratch."""
    env = {k: v for k, v in os.environ.items() if k not in without}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    return env


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_one_allowed_core_gives_one_thread_and_a_passive_openmp():
    code = ("from cnntools.core import runtime; runtime.prepare_threads(); import torch, os; runtime.use_threads(); "
            "print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'], os.environ['GOMP_SPINCOUNT'])")
    env = _child_env("OMP_NUM_THREADS", "CNNTOOLS_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    first = sorted(os.sched_getaffinity(0))[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         preexec_fn=lambda: os.sched_setaffinity(0, {first}))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "PASSIVE", "100000"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc")
def test_large_blocks_go_back_to_the_system_once_commands_set_threads():
    """runtime.use_threads (every model-running command calls it) fixes glibc's mmap threshold:
    freed batches of several MiB leave the process instead of staying in a heap that grows."""
    probe = textwrap.dedent('''
        import sys
        from cnntools.core import runtime
        if sys.argv[1] == "on":
            runtime.use_threads(1)
        import torch

        def anon():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon"):
                    return int(line.split()[1]) * 1024

        sizes = [24, 20, 16, 22, 18]
        for mb in sizes:  # glibc's default raises its threshold past these on the first frees
            x = torch.ones(mb * 2**20, dtype=torch.uint8); del x
        base = anon()
        for mb in sizes:
            x = torch.ones(mb * 2**20, dtype=torch.uint8); del x
        print((anon() - base) / 2**20)
    ''')
    env = _child_env("MALLOC_MMAP_THRESHOLD_")
    kept = {mode: float(subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, env=env,
                                       check=True).stdout) for mode in ("on", "off")}
    assert kept["on"] < 2, kept  # every block returned
    assert kept["off"] > 10, kept  # the default keeps them: the probe can tell the difference


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (mallinfo2, glibc 2.33+)")
def test_freed_heap_memory_under_the_trim_threshold_stays_for_the_next_step():
    """Fixing the mmap threshold left glibc's trim threshold at 128 KiB, so every free at the
    top of the heap handed its pages back and the next training step faulted them in again
    (12% of a small model's step). use_threads sets the trim threshold too: a freed 3 MiB
    block stays in the heap; with the mmap threshold alone (as before) the heap shrinks."""
    probe = textwrap.dedent('''
        import ctypes, sys
        from cnntools.core import runtime
        libc = ctypes.CDLL(None)
        if sys.argv[1] == "on":
            runtime.use_threads(1)
        else:
            libc.mallopt(-3, runtime.MMAP_THRESHOLD)  # the mmap threshold alone

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

        libc.mallinfo2.restype = MallInfo2
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        block = libc.malloc(3 * 2**20)  # under the mmap threshold: from the heap's top
        held = libc.mallinfo2().arena
        libc.free(block)
        print((held - libc.mallinfo2().arena) / 2**20)
    ''')
    env = _child_env("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    given_back = {mode: float(subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, env=env,
                                             check=True, timeout=120).stdout) for mode in ("on", "off")}
    assert given_back["on"] == 0, given_back  # kept for the next step
    assert given_back["off"] >= 2.5, given_back  # the probe tells: trimmed at 128 KiB


def test_a_wait_policy_of_the_users_keeps_its_spin():
    code = "from cnntools.core import runtime; runtime.prepare_threads(); import os; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {**_child_env("GOMP_SPINCOUNT"), "OMP_WAIT_POLICY": "ACTIVE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None"]
