"""`cnntools env` (what a bug report needs) and `cnntools cache list|clear` (only cnntools' own
files, never a foreign one)."""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from importlib import metadata

import numpy as np
import pytest
from PIL import Image

from cnntools.cli.docs import REPO
from conftest import assert_schema
from cnntools.data import cache


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CNNTOOLS_CACHE", str(folder))
    return folder


# ------------------------------------------------------------------------------------ env


def test_env_reports_versions_devices_threads_and_cache(cli, cache_folder, monkeypatch):
    import torch

    from cnntools.core.runtime import cpu_has_native_bf16, default_threads

    monkeypatch.setenv("CNNTOOLS_THREADS", "3")
    doc = cli("env", "--format", "json").json()  # checked against cnntools.env/1 and its JSON Schema
    assert doc["packages"]["torch"] == metadata.version("torch") and torch.__version__.startswith(doc["packages"]["torch"])
    assert doc["packages"]["torchvision"] == metadata.version("torchvision")
    assert doc["python"]["version"] == "%d.%d.%d" % tuple(__import__("sys").version_info[:3])
    for extra, info in doc["extras"].items():
        assert info["installed"] == all(v is not None for v in info["packages"].values())
    cuda = doc["devices"]["cuda"]
    assert cuda["available"] == torch.cuda.is_available() and len(cuda["devices"]) == (torch.cuda.device_count() if cuda["available"] else 0)
    assert cuda["version"] == torch.version.cuda
    assert doc["devices"]["cpu"]["native_bf16"] == cpu_has_native_bf16()
    assert doc["devices"]["auto"] == ("cuda" if torch.cuda.is_available() else "mps" if doc["devices"]["mps"]["available"] else "cpu")
    assert doc["threads"]["default"] == default_threads() == 3
    assert doc["variables"]["CNNTOOLS_THREADS"] == "3" and doc["variables"]["CNNTOOLS_CACHE"] == str(cache_folder)
    assert doc["cache"] == {"folder": str(cache_folder), "files": 0, "bytes": 0}


def test_env_table_and_csv_use_the_json_keys(cli, cache_folder):
    table = cli("env")
    assert table.exit_code == 0, table.stderr
    fields = [line.split()[0] for line in table.stdout.splitlines()[1:]]
    assert {"packages.torch", "devices.cuda.available", "threads.default", "cache.folder"} <= set(fields)
    rows = cli("env", "--format", "csv").stdout.splitlines()
    assert len(rows) == 2 and "packages.torch" in rows[0].split(",")


def test_env_extras_are_the_pyproject_extras():
    from cnntools.inference.environment import EXTRAS

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        names = [re.split(r"[<>=!~\[ ]", spec)[0] for spec in declared[extra]]
        assert names == list(packages), extra
    assert set(EXTRAS) == set(declared) - {"all", "test"}
    assert declared["all"] == [f"cnntools[{','.join(EXTRAS)}]"]


# ---------------------------------------------------------------------------------- cache


def _image_folder(root):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def _age(path, days):
    stamp = time.time() - days * 86400
    os.utime(path, (stamp, stamp))


def test_cache_lists_and_clears_only_its_own_files(cli, cache_folder, tmp_path):
    # A real store, written by a command that decodes an image folder.
    stats = cli("dataset-stats", "--data", str(_image_folder(tmp_path / "pets")), "--format", "json")
    assert stats.exit_code == 0, stats.stderr
    stores = sorted(p.name for p in cache_folder.glob("folder-*.safetensors"))
    assert len(stores) == 1
    # Someone else's files in the same folder: never listed, never removed.
    foreign = [cache_folder / "notes.txt", cache_folder / "folder-mine.safetensors", cache_folder / "model.safetensors"]
    for path in foreign:
        path.write_text("not cnntools'")
        _age(path, 400)
    (cache_folder / "sub").mkdir()
    partial = cache_folder / ".tmp-store-abc123_x.safetensors"  # a killed build
    partial.write_bytes(b"\0" * 10)
    _age(partial, 2)

    listed = cli("cache", "list", "--format", "json").json()
    assert listed["folder"] == str(cache_folder)
    kinds = {os.path.basename(e["file"]): e["kind"] for e in listed["entries"]}
    assert kinds == {stores[0]: "store", stores[0] + ".lock": "lock", partial.name: "partial"}
    store_bytes = (cache_folder / stores[0]).stat().st_size
    assert {os.path.basename(e["file"]): e["bytes"] for e in listed["entries"]}[stores[0]] == store_bytes
    assert listed["bytes"] == sum(e["bytes"] for e in listed["entries"])
    assert [os.path.basename(e["file"]) for e in listed["entries"]][0] == partial.name  # oldest first

    # --older-than: the two-day-old partial file only.
    old = cli("cache", "clear", "--older-than", "1", "--format", "json").json()
    assert [os.path.basename(e["file"]) for e in old["removed"]] == [partial.name] and old["bytes_freed"] == 10
    assert (cache_folder / stores[0]).exists()

    cleared = cli("cache", "clear", "--format", "json").json()
    assert {os.path.basename(e["file"]) for e in cleared["removed"]} == {stores[0], stores[0] + ".lock"}
    assert cleared["bytes_freed"] >= store_bytes and cleared["kept"] == []
    assert all(path.read_text() == "not cnntools'" for path in foreign) and (cache_folder / "sub").is_dir()
    assert cli("cache", "list", "--format", "json").json()["entries"] == []


def test_clear_keeps_a_store_being_built_and_a_fresh_partial_file(cache_folder):
    import fcntl

    cache_folder.mkdir()
    store = cache_folder / f"folder-{'a' * 16}-{'b' * 24}.safetensors"
    store.write_bytes(b"x")
    fresh = cache_folder / ".tmp-store-new.safetensors"
    fresh.write_bytes(b"y")
    with open(str(store) + ".lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another process builds it
        result = cache.clear_cache()
    assert result["removed"] == [] and store.exists() and fresh.exists()
    assert {os.path.basename(e["file"]) for e in result["kept"]} == {store.name, store.name + ".lock", fresh.name}
    result = cache.clear_cache()  # the lock is free now; the partial file is still under an hour old
    assert {os.path.basename(e["file"]) for e in result["removed"]} == {store.name, store.name + ".lock"}
    assert fresh.exists()


def test_cache_with_caching_off(cli, monkeypatch):
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    assert cli("cache", "list", "--format", "json").json() == {"schema": "cnntools.cache/1", "folder": None, "bytes": 0, "entries": []}
    assert cli("cache", "clear", "--format", "json").json()["removed"] == []


def test_cache_refuses_an_unknown_action(cli):
    result = cli("cache", "purge")
    assert result.exit_code == 2


def test_env_describes_each_gpu(monkeypatch):
    # No GPU on the test machine: torch's CUDA queries answer as on a two-GPU host.
    import types

    import torch

    from cnntools.inference.environment import describe_environment

    gpus = [types.SimpleNamespace(name="NVIDIA H100", total_memory=80 * 1024**3, major=9, minor=0),
            types.SimpleNamespace(name="Tesla V100", total_memory=16 * 1024**3, major=7, minor=0)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: gpus[index])
    doc = describe_environment()
    assert_schema({"schema": "cnntools.env/1", **doc})  # the declaration and its JSON Schema hold GPUs too
    devices = doc["devices"]
    assert devices["auto"] == "cuda" and devices["cuda"]["available"] is True
    assert devices["cuda"]["devices"] == [
        {"index": 0, "name": "NVIDIA H100", "memory_bytes": 80 * 1024**3, "capability": "9.0", "bf16": True},
        {"index": 1, "name": "Tesla V100", "memory_bytes": 16 * 1024**3, "capability": "7.0", "bf16": False},
    ]
