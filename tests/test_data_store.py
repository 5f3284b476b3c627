"""The decoded image store: written chunk by chunk while decoding, read memory-mapped (bit for
bit what decoding in memory gives), invalidated by a changed file, rebuilt when damaged,
built once when two processes want it at the same time, and read by shards under DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnntools.data import BatchLoader, channel_stats, load_split
from cnntools.data import folders as folders_mod
from cnntools.data.imageset import ImageSet
from cnntools.data.store import DATA_START, StoreDamaged, StoreWriter, open_store


def _folder(root: Path, n_per_class: int = 5, size=(40, 30), fmt="jpg", classes=("cat", "dog")) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., c] = 200  # something to learn
            Image.fromarray(pixels).save(root / name / f"{i}.{fmt}")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CNNTOOLS_CACHE", str(folder))
    return folder


def _decoded_in_memory(paths, size) -> torch.Tensor:
    """What decoding each file on its own gives (the reference)."""
    from cnntools.data.images import decode_file, pil

    pil()
    return torch.stack([torch.from_numpy(decode_file(p, "RGB", size).copy()).permute(2, 0, 1) for p in paths])


def test_store_is_a_safetensors_file_mapped_not_loaded(tmp_path, cache):
    root = _folder(tmp_path / "f")
    train = load_split(str(root), "train", image_size=16)
    assert train.mapped and train.meta["cache"]["written"]
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1
    # The pixels are a view of the mapped file, not a copy in the process's memory.
    arrays, meta, _ = open_store(files[0])
    assert isinstance(arrays["train.images"], np.memmap)
    from safetensors.numpy import load_file

    plain = load_file(str(files[0]))  # any safetensors reader reads it
    assert np.array_equal(plain["train.images"], train.images.numpy())
    assert plain["train.labels"].tolist() == train.labels.tolist()
    assert json.loads(plain["meta"].tobytes())["classes"] == ["cat", "dog"]


def test_mapped_reads_equal_in_memory_decoding_bit_for_bit(tmp_path, cache, monkeypatch):
    root = _folder(tmp_path / "f", size=(64, 48))  # JPEG draft scaling applies: 16 <= half of 48
    cached = load_split(str(root), "train", image_size=16)
    reference = _decoded_in_memory(cached.paths, (16, 16))
    assert torch.equal(cached.images, reference)
    again = load_split(str(root), "train", image_size=16)  # from the store, mapped
    assert again.meta["cache"]["hit"] and torch.equal(again.images, reference)
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")  # an anonymous store: same pixels
    anonymous = load_split(str(root), "train", image_size=16)
    assert anonymous.mapped and anonymous.meta["cache"]["file"] is None
    assert torch.equal(anonymous.images, reference)
    # Batches (random order, gathered from the map) equal those of the same images in memory.
    in_ram = ImageSet(images=reference.clone(), labels=again.labels.clone(), classes=again.classes)
    for a, b in zip(BatchLoader(again, batch_size=3, seed=5), BatchLoader(in_ram, batch_size=3, seed=5)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_eval_image_decodes_a_file_exactly_as_the_store_holds_it(tmp_path, cache):
    from cnntools.inference.images import read_uint8 as _read_image

    root = _folder(tmp_path / "f", size=(80, 64))
    stored = load_split(str(root), "train", image_size=24)
    for i in (0, 7):
        assert torch.equal(_read_image(stored.paths[i], 3, 24)[0], stored.images[i])


def test_the_store_is_written_in_chunks_while_decoding(tmp_path, cache, monkeypatch):
    root = _folder(tmp_path / "f", n_per_class=7)
    writes = []
    original = StoreWriter.write

    def record(self, items):
        if self._open[0].endswith(".images"):
            writes.append(len(items))
        return original(self, items)

    monkeypatch.setattr(StoreWriter, "write", record)
    monkeypatch.setattr(folders_mod, "chunk_rows", lambda item_bytes: 3)  # 3 images per chunk
    monkeypatch.setattr(folders_mod, "_GROUP", 1)  # one file per decoder task
    monkeypatch.setattr(folders_mod, "decode_workers", lambda: 1)
    train = load_split(str(root), "train", image_size=8)
    assert writes == [3, 3, 3, 3, 2] and len(train) == 14
    assert torch.equal(train.images, _decoded_in_memory(train.paths, (8, 8)))


@pytest.mark.parametrize("workers, group", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_unreadable_files_leave_no_holes_when_decoder_threads_share_chunk_buffers(tmp_path, cache, monkeypatch, workers, group):
    """Decoder threads write into two alternating chunk buffers; files that cannot be decoded
    (here at chunk edges and inside chunks) leave slots that must not reach the store."""
    root = _folder(tmp_path / "f", n_per_class=11)
    files = sorted(root.glob("*/*.jpg"))
    for i in (0, 3, 4, 9, 12, 21):
        files[i].write_bytes(b"not a jpeg")
    monkeypatch.setattr(folders_mod, "chunk_rows", lambda item_bytes: 3)
    monkeypatch.setattr(folders_mod, "_GROUP", group)
    monkeypatch.setattr(folders_mod, "decode_workers", lambda: workers)
    train = load_split(str(root), "train", image_size=8)
    good = [f for i, f in enumerate(files) if i not in (0, 3, 4, 9, 12, 21)]
    assert [Path(p) for p in train.paths] == good and len(train.meta["unreadable"]) == 6
    assert torch.equal(train.images, _decoded_in_memory(good, (8, 8)))
    assert train.labels.tolist() == [0 if f.parent.name == "cat" else 1 for f in good]


def test_a_changed_file_invalidates_the_store(tmp_path, cache):
    root = _folder(tmp_path / "f")
    first = load_split(str(root), "train", image_size=16)
    changed = Path(first.paths[3])
    Image.fromarray(np.full((30, 40, 3), 7, dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different mtime even on a coarse clock
    second = load_split(str(root), "train", image_size=16)
    assert not second.meta["cache"]["hit"]
    assert torch.equal(second.images[3], _decoded_in_memory([changed], (16, 16))[0])
    assert torch.equal(second.images[:3], first.images[:3])
    assert len(list(cache.glob("*.safetensors"))) == 1  # the stale store is removed


@pytest.mark.parametrize("damage", ["truncate", "header", "tail"])
def test_a_damaged_store_is_rebuilt_with_a_warning(tmp_path, cache, capsys, damage):
    root = _folder(tmp_path / "f")
    good = load_split(str(root), "train", image_size=16).images.clone()
    (path,) = cache.glob("*.safetensors")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "header":
        path.write_bytes(data[:8] + b"{not json" + data[17:])
    else:
        path.write_bytes(data + b"extra")
    capsys.readouterr()
    rebuilt = load_split(str(root), "train", image_size=16)
    assert "damaged image store" in capsys.readouterr().err
    assert not rebuilt.meta["cache"]["hit"] and torch.equal(rebuilt.images, good)
    assert open_store(path)[1]["classes"] == ["cat", "dog"]


def test_open_store_refuses_what_is_not_a_whole_store(tmp_path):
    path = tmp_path / "s.safetensors"
    with StoreWriter(path) as writer:
        writer.begin("x.images", (1, 2, 2))
        writer.write(np.arange(8, dtype=np.uint8).reshape(2, 1, 2, 2))
        assert writer.end() == 2
        writer.commit({"key": "k"}, {"hello": 1})
    arrays, meta, metadata = open_store(path, {"key": "k"})
    assert arrays["x.images"].tolist() == np.arange(8).reshape(2, 1, 2, 2).tolist() and meta == {"hello": 1}
    with pytest.raises(StoreDamaged):
        open_store(path, {"key": "other"})
    path.write_bytes(path.read_bytes()[: DATA_START + 3])
    with pytest.raises(StoreDamaged):
        open_store(path)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    assert left == []


def test_a_failed_build_leaves_no_temporary_file(tmp_path):
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s.safetensors") as writer:
            writer.begin("x.images", (3,))
            writer.write(np.zeros((4, 3), dtype=np.uint8))
            raise RuntimeError("decoder died")
    assert list(tmp_path.iterdir()) == []


_BUILD = """
import json, sys
from cnntools.data import load_split
s = load_split(sys.argv[1], "train", image_size=16)
print(json.dumps({"cache": s.meta["cache"], "sum": int(s.images.sum())}))
"""


def test_two_processes_building_the_same_store_at_once(tmp_path, cache):
    root = _folder(tmp_path / "f", n_per_class=30)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["sum"] == results[1]["sum"]
    assert sorted(r["cache"]["written"] for r in results) == [False, True]  # one built it, the other mapped it
    assert len(list(cache.glob("*.safetensors"))) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]


def test_derived_sets_of_a_mapped_store_stay_mapped_and_exact(tmp_path, cache, monkeypatch):
    import cnntools.data.imageset as imageset_mod

    monkeypatch.setattr(imageset_mod, "CHUNK_BYTES", 1000)  # many small pieces
    root = _folder(tmp_path / "f", n_per_class=6)
    mapped = load_split(str(root), "train", image_size=16)
    in_ram = ImageSet(images=mapped.images.clone(), labels=mapped.labels.clone(), classes=mapped.classes)
    for a, b in ((mapped.resized(12, channels=1), in_ram.resized(12, channels=1)),
                 (mapped.subset([5, 0, 9]), in_ram.subset([5, 0, 9]))):
        assert a.mapped and not b.mapped and torch.equal(a.images, b.images)
    x = mapped.images.numpy().astype(np.float64) / 255
    mean, std = channel_stats(mapped)
    assert np.allclose(mean, x.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    assert np.allclose(std, x.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    # The carved validation split of a folder is mapped too, and the two parts partition it.
    train = load_split(str(root), "train", image_size=16, val_split=0.25, seed=1)
    val = load_split(str(root), "val", image_size=16, val_split=0.25, seed=1)
    assert train.mapped and val.mapped and len(train) + len(val) == len(mapped)
    both = torch.cat([train.images, val.images]).flatten(1)
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, mapped.images.flatten(1).numpy()))


def test_ranks_read_disjoint_shards_of_the_same_store(tmp_path, cache):
    root = _folder(tmp_path / "f", n_per_class=7)
    data = load_split(str(root), "train", image_size=8)
    seen = []
    for rank in range(2):
        loader = BatchLoader(data, batch_size=4, seed=3, rank=rank, world_size=2, pad=False)
        order = loader.indices()
        got = torch.cat([x for x, _ in loader])
        assert torch.allclose(got, data.images[order].float() / 255, atol=1e-6)
        seen.append(set(order.tolist()))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(len(data)))


@pytest.mark.slow
def test_ddp_ranks_share_one_store_built_once(tmp_path, cache):
    root = _folder(tmp_path / "f", n_per_class=12, size=(20, 20), fmt="png")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    args = ["--data", str(root), "--arch", "lenet", "--image-size", "16", "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--augment", "none", "-q", "--format", "jsonl"]
    ddp = subprocess.run([sys.executable, "-m", "cnntools", "train", "--nproc", "2", *args, "-o", str(tmp_path / "d.safetensors")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr
    assert len(list(cache.glob("*.safetensors"))) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]
    assert json.loads(ddp.stdout.splitlines()[-1])["train_acc"] >= 0


def test_train_decodes_a_non_square_folder_once_at_the_models_size(cli, tmp_path, cache):
    """Without --image-size the model's size comes from the files' median size, read from
    their headers before decoding: one decode straight to that size, one store."""
    root = _folder(tmp_path / "f", n_per_class=6, size=(40, 30))
    out = tmp_path / "m.safetensors"
    result = cli("train", "--data", root, "--arch", "simple-cnn", "--epochs", "1", "--val-split", "0",
                 "--device", "cpu", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("Decoding 12 images") == 1, result.stderr
    assert "(RGB 30x30)" in result.stderr
    assert len(list(cache.rglob("*.safetensors"))) == 1
    # A second run finds the store: nothing is decoded again.
    again = cli("train", "--data", root, "--arch", "simple-cnn", "--epochs", "1", "--val-split", "0",
                "--device", "cpu", "-o", tmp_path / "m2.safetensors")
    assert again.exit_code == 0 and "Decoding" not in again.stderr, again.stderr
