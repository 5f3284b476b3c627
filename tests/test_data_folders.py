"""Image folders: layouts, mode and size conversion, unreadable files, errors, the on-disk cache."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cnntools.data import load_split, load_splits
from cnntools.core.errors import CnnError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNTOOLS_CACHE", str(cache))
    return cache


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path)
    return path


def make_split_folder(root, rng):
    """train/valid/test × cat/dog, RGB PNGs 12×10 plus one grey, one RGBA, one palette and a corrupt file."""
    arrays = {}
    for split, n in (("train", 3), ("valid", 2), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                arr = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                arrays[f"{split}/{cls}/{i}.png"] = arr
                _save(root / split / cls / f"{i}.png", arr)
    _save(root / "train" / "cat" / "grey.png", rng.integers(0, 256, (10, 12), dtype=np.uint8))
    _save(root / "train" / "dog" / "alpha.png", rng.integers(0, 256, (10, 12, 4), dtype=np.uint8))
    _save(root / "train" / "dog" / "pal.gif", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), mode="P")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    (root / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    return arrays


def test_split_folder_with_corrupt_file(tmp_path, capsys):
    root = tmp_path / "pets"
    arrays = make_split_folder(root, np.random.default_rng(0))
    splits = load_splits(str(root))
    assert list(splits) == ["train", "val", "test"]
    train = splits["train"]
    assert train.classes == ["cat", "dog"]
    assert len(train) == 3 * 2 + 3 and train.class_counts() == [4, 5]
    assert train.images.shape[1:] == (3, 10, 12)
    assert [len(splits[s]) for s in ("val", "test")] == [4, 4]
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "cannot decode" in err and "notes.txt" not in err
    bad = train.meta["unreadable"]
    assert len(bad) == 1 and bad[0][0].endswith("broken.jpg")
    # Pixels survive exactly (same size: no resampling), labels follow the folder.
    for img, lab, path in zip(train.images, train.labels.tolist(), train.paths):
        rel = os.path.relpath(path, root)
        if rel in arrays:
            assert np.array_equal(img.permute(1, 2, 0).numpy(), arrays[rel])
        assert train.classes[lab] == rel.split(os.sep)[1]
    # Grey → replicated RGB, palette → its RGB colours, RGBA composited on white.
    grey_idx = [i for i, p in enumerate(train.paths) if p.endswith("grey.png")][0]
    g = train.images[grey_idx]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    a_idx = [i for i, p in enumerate(train.paths) if p.endswith("alpha.png")][0]
    rgba = np.asarray(Image.open(root / "train" / "dog" / "alpha.png")).astype(np.float64)
    expected = rgba[..., :3] * rgba[..., 3:] / 255 + 255 * (1 - rgba[..., 3:] / 255)
    assert np.abs(train.images[a_idx].permute(1, 2, 0).numpy() - expected).max() <= 1.0
    p_idx = [i for i, p in enumerate(train.paths) if p.endswith("pal.gif")][0]
    pal = np.asarray(Image.open(root / "train" / "dog" / "pal.gif").convert("RGB"))
    assert np.array_equal(train.images[p_idx].permute(1, 2, 0).numpy(), pal)


def test_flat_class_folder_all_grey_and_different_sizes(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "flat"
    sizes = [(8, 10), (12, 10), (16, 20), (8, 14), (10, 10)]  # (h, w)
    for i, (h, w) in enumerate(sizes):
        _save(root / ("a" if i % 2 else "b") / f"{i}.png", rng.integers(0, 256, (h, w), dtype=np.uint8))
    splits = load_splits(str(root), val_split=0.5, seed=0)
    assert list(splits) == ["train", "val"]
    train = load_split(str(root), "train")
    assert len(train) == 5 and train.channels == 1
    assert train.image_size == (10, 10)  # median height 10, median width 10
    assert sorted(train.meta["per_image_original_size"]) == sorted((w, h) for h, w in sizes)
    fixed = load_split(str(root), "train", image_size=(6, 9))
    assert fixed.image_size == (6, 9)
    with pytest.raises(CnnError, match="no test split"):
        load_split(str(root), "test")


def test_empty_and_single_class_folders_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnError, match="no images found"):
        load_split(str(tmp_path / "empty"), "train")
    (tmp_path / "empty" / "cat").mkdir()
    (tmp_path / "empty" / "cat" / "readme.txt").write_text("x")
    with pytest.raises(CnnError, match="no images found"):
        load_split(str(tmp_path / "empty"), "train")
    _save(tmp_path / "one" / "cat" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(CnnError, match="only one class"):
        load_split(str(tmp_path / "one"), "train")
    for name in ("a", "b"):
        (tmp_path / "bad" / name).mkdir(parents=True)
        (tmp_path / "bad" / name / "x.png").write_bytes(b"garbage")
    with pytest.raises(CnnError, match="could be decoded"):
        load_split(str(tmp_path / "bad"), "train")


def test_cache_serves_second_run_and_invalidates_on_change(tmp_path, private_cache, monkeypatch):
    rng = np.random.default_rng(2)
    root = tmp_path / "cached"
    for cls in ("x", "y"):
        for i in range(3):
            _save(root / cls / f"{i}.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    first = load_split(str(root), "train")
    assert first.meta["cache"]["hit"] is False and first.meta["cache"]["written"] is True
    entries = list(private_cache.glob("*.safetensors"))
    assert len(entries) == 1

    # The second run never decodes: make PIL unusable and load again.
    import PIL.Image

    def refuse(*args, **kwargs):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as patch:
        patch.setattr(PIL.Image, "open", refuse)
        second = load_split(str(root), "train")
    assert second.meta["cache"]["hit"] is True
    assert torch.equal(first.images, second.images) and first.paths == second.paths

    # Touching a file (new mtime) invalidates; so does changing its content.
    target = root / "x" / "0.png"
    later = time.time() + 5
    os.utime(target, (later, later))
    assert load_split(str(root), "train").meta["cache"]["hit"] is False
    assert load_split(str(root), "train").meta["cache"]["hit"] is True
    new = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    _save(target, new)
    changed = load_split(str(root), "train")
    assert changed.meta["cache"]["hit"] is False
    idx = changed.paths.index(str(target))
    assert np.array_equal(changed.images[idx].permute(1, 2, 0).numpy(), new)
    # A new file invalidates too, and only the newest entry of this folder is kept.
    _save(root / "y" / "3.png", new)
    assert len(load_split(str(root), "train")) == 7
    assert len(list(private_cache.glob("*.safetensors"))) == 1
    # A damaged cache entry is rebuilt, not fatal.
    entry = next(private_cache.glob("*.safetensors"))
    entry.write_bytes(b"junk")
    assert len(load_split(str(root), "train")) == 7


def test_cache_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    root = tmp_path / "nocache"
    for cls in ("x", "y"):
        _save(root / cls / "0.png", np.zeros((4, 4, 3), np.uint8))
    s = load_split(str(root), "train")
    assert s.meta["cache"] == {"file": None, "hit": False, "written": False}


def test_image_files_of_several_sizes_decode_as_the_store_does(tmp_path):
    """saliency/featmaps --image: the files after the first are decoded at its size by the
    folder decoder (PIL, JPEG draft), not resized afterwards by another resampler."""
    from cnntools.data.images import read_image
    from cnntools.interpret.inputs import read_image_files

    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(40, 30), (80, 64), (40, 30)]):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    images = read_image_files(paths)
    assert images.shape == (3, 3, 30, 40) and images.dtype == torch.uint8
    for path, image in zip(paths, images):
        expected = read_image(path, "RGB", (40, 30))
        assert torch.equal(image, torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_one_walk_and_one_stat_per_file_for_every_split_a_run_opens(cli, tmp_path, monkeypatch):
    """`train --test-each-epoch` on a folder opens it for train/val and again for test: one walk
    (each class folder listed once) and at most one stat of each image file in the whole run,
    the store key included (issue 29: 111,000 stats and two walks for 20,000 images)."""
    root = tmp_path / "pets"
    make_split_folder(root, np.random.default_rng(0))
    images = {os.path.realpath(p) for p in root.rglob("*") if p.suffix in (".png", ".jpg", ".gif")}
    class_dirs = {os.path.realpath(p) for p in root.glob("*/*") if p.is_dir()}
    stats, listings = {}, {}
    real_stat, real_scandir = os.stat, os.scandir

    def counting_stat(path, *args, **kwargs):
        key = os.path.realpath(path) if isinstance(path, (str, os.PathLike)) else None
        if key in images:
            stats[key] = stats.get(key, 0) + 1
        return real_stat(path, *args, **kwargs)

    def counting_scandir(path="."):
        key = os.path.realpath(path)
        if key in class_dirs:
            listings[key] = listings.get(key, 0) + 1
        return real_scandir(path)

    monkeypatch.setattr(os, "stat", counting_stat)
    monkeypatch.setattr(os, "scandir", counting_scandir)
    result = cli("train", "--data", str(root), "--arch", "mlp", "--epochs", "1", "--batch-size", "4",
                 "--test-each-epoch", "-o", str(tmp_path / "m.safetensors"), "-q")
    assert result.exit_code == 0, result.stderr
    assert set(listings) == class_dirs and set(listings.values()) == {1}, listings
    assert set(stats) == images and max(stats.values()) == 1, stats
    # Outside a run, each open walks afresh: a file changed between two opens is seen.
    stats.clear()
    load_split(str(root), "test")
    load_split(str(root), "test")
    assert set(stats.values()) == {2}
