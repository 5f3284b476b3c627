"""Registered datasets: digits, fake, CIFAR python batches, MNIST idx files, splits and errors."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from cnntools.data import load_split, load_splits, normalization, stratified_split
from cnntools.core.errors import CnnError


def test_digits_split_is_fixed_stratified_and_matches_sklearn():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train = load_split("digits", "train")
    test = load_split("digits", "test", seed=123)  # --seed never moves the test set
    assert (len(train), len(test)) == (1438, 359)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert train.classes == [str(d) for d in range(10)]
    total = np.bincount(bunch.target, minlength=10)
    counts = np.array(train.class_counts()) + np.array(test.class_counts())
    assert counts.tolist() == total.tolist()
    # Each class gives round(20%) of its images to test.
    assert test.class_counts() == [int(round(0.2 * c)) for c in total]
    # Pixel values 0..16 scaled to 0..255, and every image is one of sklearn's with its label.
    expected = {bytes(((im.astype(np.int64) * 255 + 8) // 16).astype(np.uint8).ravel()): int(t)
                for im, t in zip(bunch.images, bunch.target)}
    for s in (train, test):
        for img, lab in zip(s.images.numpy(), s.labels.tolist()):
            assert expected[bytes(img.ravel())] == lab
    assert int(train.images.max()) == 255


def test_shipped_digits_are_sklearns_bit_for_bit_and_load_without_sklearn():
    """digits.npz holds load_digits()'s images and labels exactly; the splits are the ones the
    scikit-learn path gave (same indices, same bytes); reading them imports neither
    scikit-learn nor scipy (1-4 s, issue 29)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from cnntools.data import synthetic

    bunch = load_digits()
    with np.load(synthetic.DIGITS_FILE) as stored:
        assert np.array_equal(stored["counts"].astype(np.float64), bunch.images)
        assert np.array_equal(stored["labels"].astype(np.int64), bunch.target)
    scaled = ((bunch.images.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)[:, None]
    train_idx, test_idx = stratified_split(bunch.target, synthetic.DIGITS_TEST_FRACTION, synthetic.DIGITS_SPLIT_SEED)
    for split, idx in (("train", train_idx), ("test", test_idx)):
        got = load_split("digits", split)
        assert np.array_equal(got.images.numpy(), scaled[idx])
        assert np.array_equal(got.labels.numpy(), bunch.target[idx])
    probe = ("import sys; from cnntools.data import load_split; load_split('digits', 'train'); load_split('digits', 'test'); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout[:300]


def test_val_split_is_stratified_seeded_and_disjoint():
    train = load_split("digits", "train", val_split=0.25, seed=3)
    val = load_split("digits", "val", val_split=0.25, seed=3)
    full = load_split("digits", "train")
    assert len(train) + len(val) == len(full)
    assert val.class_counts() == [int(round(0.25 * c)) for c in full.class_counts()]
    flat = lambda s: {bytes(x) for x in s.images.reshape(len(s), -1).numpy()}  # noqa: E731
    assert flat(train) | flat(val) == flat(full)
    again = load_split("digits", "val", val_split=0.25, seed=3)
    other = load_split("digits", "val", val_split=0.25, seed=4)
    assert torch.equal(again.images, val.images)
    assert not torch.equal(other.images, val.images)
    with pytest.raises(CnnError, match="--val-split"):
        load_split("digits", "val")


def test_stratified_split_keeps_one_of_small_classes():
    labels = np.array([0] * 10 + [1] * 2 + [2])
    keep, held = stratified_split(labels, 0.2, 0)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(13))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]


def test_resized_and_channel_conversion_match_torch():
    s = load_split("digits", "test")
    big = s.resized(32, channels=3)
    assert big.images.shape == (359, 3, 32, 32) and big.images.dtype == torch.uint8
    ref = torch.nn.functional.interpolate(s.images.float(), size=(32, 32), mode="bilinear",
                                          align_corners=False, antialias=True).round().clamp(0, 255)
    assert torch.equal(big.images[:, 1:2], ref.to(torch.uint8))
    assert torch.equal(big.images[:, 0], big.images[:, 2])
    rgb = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    from cnntools.data import ImageSet

    grey = ImageSet(rgb, torch.zeros(4, dtype=torch.long), ["a"]).resized(channels=1).images
    lum = (0.299 * rgb[:, 0].double() + 0.587 * rgb[:, 1].double() + 0.114 * rgb[:, 2].double())
    assert (grey[:, 0].double() - lum).abs().max() <= 0.5 + 1e-4


def test_fake_and_fake_patch():
    fake = load_split("fake:50,size=16,channels=1,classes=5", "train")
    assert fake.images.shape == (50, 1, 16, 16) and fake.class_counts() == [10] * 5
    assert len(load_split("fake:50", "test")) == 10
    patch = load_split("fake-patch:64", "train")
    assert patch.classes == ["top-left", "top-right", "bottom-left", "bottom-right"]
    boxes = patch.meta["patch_boxes"]
    for img, lab, (t, l, b, r) in zip(patch.images, patch.labels.tolist(), boxes.tolist()):
        assert (img[:, t:b, l:r] == 255).all()
        assert img.float().mean(0).lt(255).float().sum() == 32 * 32 - (b - t) * (r - l)
        assert (t >= 16) == (lab >= 2) and (l >= 16) == (lab % 2 == 1)
        assert (b - 1 >= 16) == (lab >= 2) and (r - 1 >= 16) == (lab % 2 == 1)
    sub = patch.subset([3, 1])
    assert torch.equal(sub.meta["patch_boxes"], boxes[[3, 1]])
    with pytest.raises(CnnError, match="unknown fake dataset option"):
        load_split("fake:bogus=1", "train")


def test_fake_patch_is_learnable_by_a_small_cnn():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add contention on a shared machine
    try:
        torch.manual_seed(0)
        train = load_split("fake-patch:512,size=16", "train")
        test = load_split("fake-patch:512,size=16", "test")
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
            torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 4),
        )
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        x = train.images.float() / 255
        for _ in range(2):
            for i in range(0, len(x), 64):
                loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), train.labels[i:i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            acc = (model(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert acc >= 0.95


# ---------------------------------------------------------------------------- CIFAR pickles


def _write_batch(path, data, labels, label_key="labels", protocol=2):
    with open(path, "wb") as handle:
        pickle.dump({"batch_label": "x", label_key: labels, "data": data}, handle, protocol=protocol)


@pytest.mark.parametrize("stored", [False, True])
def test_cifar_layout_folder_with_custom_label_names(tmp_path, monkeypatch, stored):
    # Above the store threshold the batches go through a mapped store, batch file by batch file.
    from cnntools.data import cache

    monkeypatch.setenv("CNNTOOLS_CACHE", str(tmp_path / "cache"))
    if stored:
        monkeypatch.setattr(cache, "STORE_THRESHOLD", 0)
    rng = np.random.default_rng(0)
    root = tmp_path / "course"
    root.mkdir()
    names = ["apple", "pear", "plum", "fig", "kiwi"]
    batches = []
    for i, n in enumerate([7, 3, 11], start=1):  # any number of images per batch
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 5, n)]
        _write_batch(root / f"data_batch_{i}", data, labels, protocol=2 if i == 1 else 4)
        batches.append((data, labels))
    test = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    _write_batch(root / "test_batch", test, np.array([0, 1, 2, 4]))  # labels as a NumPy array
    with open(root / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": names, "num_cases_per_batch": 7}, handle)
    splits = load_splits(str(root))
    assert list(splits) == ["train", "test"]
    train = splits["train"]
    assert train.classes == names and len(train) == 21
    expected = np.concatenate([d for d, _ in batches]).reshape(-1, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), expected)
    assert train.labels.tolist() == sum((lab for _, lab in batches), [])
    assert np.array_equal(splits["test"].images.numpy(), test.reshape(-1, 3, 32, 32))
    assert train.mapped == stored and len(list((tmp_path / "cache").glob("*.safetensors"))) == (2 if stored else 0)


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "owned"),))

    root = tmp_path / "evil"
    root.mkdir()
    with open(root / "data_batch_1", "wb") as handle:
        pickle.dump({"data": Evil(), "labels": [0]}, handle)
    with open(root / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": ["a", "b"]}, handle)
    with pytest.raises(CnnError, match="refusing"):
        load_split(str(root), "train")
    assert not (tmp_path / "owned").exists()


def test_cifar10_and_cifar100_layouts_under_data_dir(tmp_path):
    rng = np.random.default_rng(1)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        _write_batch(c10 / f"data_batch_{i}", rng.integers(0, 256, (2, 3072), dtype=np.uint8), [i % 10, 9])
    _write_batch(c10 / "test_batch", rng.integers(0, 256, (3, 3072), dtype=np.uint8), [0, 1, 2])
    with open(c10 / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}, handle)
    train = load_split("cifar10", "train", data_dir=str(tmp_path))
    assert len(train) == 10 and train.classes[0] == "airplane" and train.labels.tolist()[:2] == [1, 9]
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    for name, n in (("train", 6), ("test", 2)):
        with open(c100 / name, "wb") as handle:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n)),
                         "coarse_labels": [0] * n}, handle)
    with open(c100 / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": ["c"]}, handle)
    test = load_split("cifar100", "test", data_dir=str(tmp_path))
    assert len(test.classes) == 100 and test.labels.tolist() == [0, 1]


def test_missing_torchvision_files_name_them_and_download(tmp_path):
    for name, expected in (("cifar10", "data_batch_1"), ("mnist", "train-images-idx3-ubyte"),
                           ("fashion-mnist", "t10k-labels-idx1-ubyte"), ("cifar100", "meta")):
        with pytest.raises(CnnError) as info:
            load_split(name, "train", data_dir=str(tmp_path))
        message = str(info.value)
        assert expected in message and "--download" in message and str(tmp_path) in message


# ---------------------------------------------------------------------------- MNIST idx


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_mnist_idx_layout_plain_and_gz(tmp_path):
    rng = np.random.default_rng(2)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_x = rng.integers(0, 256, (9, 28, 28), dtype=np.uint8)
    train_y = rng.integers(0, 10, 9).astype(np.uint8)
    test_x = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    test_y = np.array([3, 1, 4, 1], dtype=np.uint8)
    (raw / "train-images-idx3-ubyte").write_bytes(_idx(train_x))
    (raw / "train-labels-idx1-ubyte").write_bytes(_idx(train_y))
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(test_x)))
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(test_y)))
    splits = load_splits("mnist", data_dir=str(tmp_path))
    assert np.array_equal(splits["train"].images.numpy()[:, 0], train_x)
    assert splits["train"].labels.tolist() == train_y.tolist()
    assert splits["test"].labels.tolist() == [3, 1, 4, 1] and splits["test"].images.shape == (4, 1, 28, 28)
    # A truncated file is one clear error.
    (raw / "train-images-idx3-ubyte").write_bytes(_idx(train_x)[:-5])
    with pytest.raises(CnnError, match="truncated"):
        load_split("mnist", "train", data_dir=str(tmp_path))


def test_normalization_specs():
    s = load_split("fake:20,channels=3", "train")
    assert normalization("half", s) == ([0.5] * 3, [0.5] * 3)
    assert normalization("none", s) == ([0.0] * 3, [1.0] * 3)
    assert normalization("imagenet", s) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert normalization("0.5,0.25", s) == ([0.5] * 3, [0.25] * 3)
    assert normalization("0.1,0.2,0.3,1,2,3", s) == ([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    pixels = s.images.numpy().astype(np.float64) / 255
    mean, std = normalization("dataset", s)
    assert np.allclose(mean, pixels.mean(axis=(0, 2, 3)), rtol=0, atol=1e-15)
    assert np.allclose(std, pixels.std(axis=(0, 2, 3)), rtol=0, atol=1e-15)
    for bad in ("0.5", "a,b", "0.5,0"):
        with pytest.raises(CnnError):
            normalization(bad, s)
    s.images = s.images.clone()
    s.images[:, 1] = 77  # a constant channel: mean 77/255, std 0 → left at 1, no division by zero
    mean, std = normalization("dataset", s)
    assert mean[1] == pytest.approx(77 / 255) and std[1] == 1.0 and std[0] > 0


def test_unknown_dataset_and_split():
    with pytest.raises(CnnError, match="unknown dataset"):
        load_split("imagenet22k", "train")
    with pytest.raises(CnnError, match="no test split|unknown split"):
        load_split("digits", "holdout")


def test_fake_images_are_generated_in_chunks_identically():
    """A large fake set is drawn chunk by chunk (bounded memory) and equals one draw."""
    from cnntools.data import synthetic

    small = synthetic.FakeSource({"n": "300"}).load("train")
    old = synthetic._CHUNK_PIXELS
    try:
        synthetic._CHUNK_PIXELS = 3 * 32 * 32 * 7  # 7 images per chunk, a ragged last chunk
        chunked = synthetic.FakeSource({"n": "300"}).load("train")
    finally:
        synthetic._CHUNK_PIXELS = old
    assert torch.equal(small.images, chunked.images) and torch.equal(small.labels, chunked.labels)
