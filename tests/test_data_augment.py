"""Batched augmentation against torchvision's functional ops; the BatchLoader's order and shards."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cnntools.data import BatchLoader, ImageSet, load_split, parse_augment
from cnntools.data import augment as A
from cnntools.core.errors import CnnError


@pytest.fixture
def batch():
    return torch.rand(5, 3, 14, 18, generator=torch.Generator().manual_seed(0))


def test_flip_matches_torchvision(batch):
    mask = torch.tensor([True, False, True, True, False])
    out = A.hflip(batch, mask)
    for i in range(5):
        ref = TF.horizontal_flip(batch[i]) if mask[i] else batch[i]
        assert torch.equal(out[i], ref)


def test_crop_with_padding_matches_torchvision(batch):
    top = torch.tensor([0, 8, 3, 4, 1])
    left = torch.tensor([8, 0, 5, 2, 7])
    out = A.crop_with_padding(batch, 4, top, left)
    for i in range(5):
        ref = TF.crop(TF.pad(batch[i], [4]), int(top[i]), int(left[i]), 14, 18)
        assert torch.equal(out[i], ref)


def test_fused_crop_and_flip_is_crop_then_flip(batch):
    top, left = torch.tensor([0, 8, 3, 4, 1]), torch.tensor([8, 0, 5, 2, 7])
    flip = torch.tensor([True, True, False, False, True])
    fused = A.crop_with_padding_and_flip(batch, 4, top, left, flip)
    assert torch.equal(fused, A.hflip(A.crop_with_padding(batch, 4, top, left), flip))


def test_rotation_matches_torchvision(batch):
    angles = torch.tensor([0.0, 15.0, -30.0, 90.0, 7.5])
    out = A.rotate(batch, angles)
    for i in range(5):
        ref = TF.rotate(batch[i], float(angles[i]), interpolation=InterpolationMode.BILINEAR)
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_resized_crop_matches_torchvision(batch):
    top, left = torch.tensor([0, 2, 5, 1, 0]), torch.tensor([0, 3, 1, 6, 2])
    height, width = torch.tensor([14, 7, 9, 13, 4]), torch.tensor([18, 10, 17, 8, 5])
    out = A.resized_crop(batch, top, left, height, width)
    for i in range(5):
        ref = TF.resized_crop(batch[i], int(top[i]), int(left[i]), int(height[i]), int(width[i]), [14, 18],
                              interpolation=InterpolationMode.BILINEAR, antialias=False)
        # Equal wherever the sample point lies inside the box; near the edges of an upscaled crop
        # torchvision clamps to the crop while the batched grid reads the pixel just outside it.
        rows = (torch.arange(14) + 0.5) * height[i] / 14 - 0.5
        cols = (torch.arange(18) + 0.5) * width[i] / 18 - 0.5
        r_ok = (rows >= 0) & (rows <= height[i] - 1)
        c_ok = (cols >= 0) & (cols <= width[i] - 1)
        inside = r_ok[:, None] & c_ok[None, :]
        assert inside.sum() > 0.5 * inside.numel()
        assert torch.allclose(out[i][:, inside], ref[:, inside], atol=1e-5)
    assert torch.allclose(out[0], batch[0], atol=1e-6)  # the full box is the identity


def test_colour_jitter_ops_match_torchvision(batch):
    factors = torch.tensor([0.6, 1.0, 1.4, 0.0, 1.2])
    for mine, theirs in ((A.adjust_brightness, TF.adjust_brightness), (A.adjust_contrast, TF.adjust_contrast),
                         (A.adjust_saturation, TF.adjust_saturation)):
        out = mine(batch.clone(), factors)
        for i in range(5):
            assert torch.allclose(out[i], theirs(batch[i], float(factors[i])), atol=1e-6)


def test_random_resized_crop_boxes_are_valid_and_seeded():
    gen = torch.Generator().manual_seed(0)
    top, left, h, w = A.sample_resized_crop_boxes(4000, 20, 30, 0.08, gen, "cpu")
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 20).all() and (left + w <= 30).all()
    area = (h * w).float() / 600
    assert area.min() >= 0.06 and area.max() <= 1.0 and 0.4 < area.mean() < 0.65
    again = A.sample_resized_crop_boxes(4000, 20, 30, 0.08, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(again[0], top)


def test_parse_augment_and_the_pipeline():
    aug = parse_augment("flip,crop:4,jitter:0.4,rotate:15,rrc:0.08")
    assert aug.ops == [("flip", 0.5), ("crop", 4.0), ("jitter", 0.4), ("rotate", 15.0), ("rrc", 0.08)]
    assert parse_augment("") is None and parse_augment("none") is None
    for bad in ("flip:2", "crop:1.5", "blur", "rotate:x"):
        with pytest.raises(CnnError):
            parse_augment(bad)
    x = torch.rand(64, 3, 16, 16)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    out = aug(x, g1)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, aug(x, g2))
    # flip:1 flips every image; crop:0 is the identity.
    assert torch.equal(parse_augment("flip:1")(x), x.flip(-1))
    assert torch.equal(parse_augment("crop:0")(x), x)
    # Per-sample parameters: crop offsets differ across the batch.
    crops = parse_augment("crop:4")(x.repeat(1, 1, 1, 1)[:1].expand(32, -1, -1, -1).contiguous())
    assert len({bytes(c.numpy()) for c in crops}) > 5


def _set(n=23, c=1):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, c, 2, 2).contiguous()
    return ImageSet(images, torch.arange(n) % 3, ["a", "b", "c"])


def test_loader_normalises_and_covers_every_sample_once():
    data = _set()
    loader = BatchLoader(data, batch_size=5, shuffle=True, seed=7, mean=[0.1], std=[0.5])
    assert len(loader) == 5
    seen = []
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        values = x[:, 0, 0, 0] * 0.5 + 0.1
        seen.extend(torch.round(values * 255).long().tolist())
        assert torch.equal(y, torch.tensor(seen[-len(y):]) % 3)
    assert sorted(seen) == list(range(23))
    loader.set_epoch(0)
    assert torch.equal(loader.indices(), torch.randperm(23, generator=torch.Generator().manual_seed(7)))
    loader.set_epoch(1)
    assert torch.equal(loader.indices(), torch.randperm(23, generator=torch.Generator().manual_seed(8)))
    assert len(BatchLoader(data, batch_size=5, drop_last=True)) == 4
    assert torch.equal(BatchLoader(data, batch_size=5, shuffle=False).indices(), torch.arange(23))


def test_loader_shards_the_same_permutation_across_ranks():
    data = _set(23)
    shards = [BatchLoader(data, batch_size=4, seed=3, rank=r, world_size=3) for r in range(3)]
    for loader in shards:
        loader.set_epoch(2)
    parts = [loader.indices() for loader in shards]
    assert [len(p) for p in parts] == [8, 8, 8] and [len(s) for s in shards] == [2, 2, 2]
    order = torch.randperm(23, generator=torch.Generator().manual_seed(5))
    padded = torch.cat([order, order[:1]])
    for r in range(3):
        assert torch.equal(parts[r], padded[r::3])
    assert set(torch.cat(parts).tolist()) == set(range(23))
    dropped = [BatchLoader(data, batch_size=4, seed=3, rank=r, world_size=3, drop_last=True) for r in range(3)]
    assert [len(d.indices()) for d in dropped] == [7, 7, 7]


def test_loader_augments_on_whole_batches_reproducibly():
    train = load_split("digits", "train").resized(16, channels=3)
    aug = parse_augment("flip,crop:2")
    a = BatchLoader(train, batch_size=64, seed=0, augment=aug, mean=[0.5] * 3, std=[0.5] * 3)
    b = BatchLoader(train, batch_size=64, seed=0, augment=aug, mean=[0.5] * 3, std=[0.5] * 3)
    xa, _ = next(iter(a))
    xb, _ = next(iter(b))
    assert torch.equal(xa, xb) and xa.shape == (64, 3, 16, 16)
    plain = BatchLoader(train, batch_size=64, seed=0, mean=[0.5] * 3, std=[0.5] * 3)
    xp, _ = next(iter(plain))
    assert not torch.equal(xa, xp)
    assert xa.min() >= -1 - 1e-6 and xa.max() <= 1 + 1e-6


def test_loader_batches_in_channels_last_hold_the_same_values():
    data = ImageSet(images=torch.randint(0, 256, (9, 3, 6, 6), dtype=torch.uint8), labels=torch.arange(9), classes=list("abcdefghi"))
    for spec in (None, "flip,crop:2", "flip,jitter:0.3"):
        batches = {}
        for channels_last in (False, True):
            loader = BatchLoader(data, batch_size=4, seed=3, augment=parse_augment(spec), mean=[0.2] * 3, std=[0.3] * 3,
                                 channels_last=channels_last)
            loader.set_epoch(1)
            batches[channels_last] = list(loader)
        for (x, y), (x_cl, y_cl) in zip(batches[False], batches[True]):
            assert x_cl.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(x_cl, x)
            assert torch.equal(y_cl, y)


# ---------------------------------------------------------------------------- what `auto` resolves to


def _image_folder(root, classes, size, mode, n=6):
    """A train/ test/ image folder of `n` random PNGs per class (`mode` L: one channel)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                shape = (size, size) if mode == "L" else (size, size, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
    return str(root)


@pytest.mark.parametrize("data, channels, size, expected", [
    ("digits", 1, 8, A.DIGIT_AUGMENT), ("mnist", 3, 32, A.DIGIT_AUGMENT),  # known digits, whatever the shape
    ("./folder", 1, 64, A.DIGIT_AUGMENT), ("./folder", 3, 28, A.DIGIT_AUGMENT),  # one channel, or small
    ("cifar10", 3, 32, "none"), ("./photos", 3, 224, "none"),
])
def test_auto_resolves_by_the_data_and_never_to_a_flip(data, channels, size, expected):
    assert A.resolve_augment("auto", data, channels, size) == expected
    assert "flip" not in expected
    assert A.resolve_augment("flip,crop:4", data, channels, size) == "flip,crop:4"  # a spec is taken as given


def test_orientation_names_warn_only_for_flips():
    classes = ["deg135_left", "deg135_right", "deg45_mirrored"]
    assert "deg135_left" in A.orientation_warning("flip,crop:4", classes)
    assert "deg135_left" in A.orientation_warning("vflip", classes)
    assert A.orientation_warning("crop:4,rotate:10", classes) is None
    assert A.orientation_warning("flip", ["cat", "dog", "leftover", "degree"]) is None


def test_preview_applies_what_train_applies(tmp_path, cli):
    """A grey 28-px folder (an MNIST image folder): `auto` resolves to the digits augmentation
    in both, recorded in the checkpoint, shown by info; a flip on orientation classes warns in both."""
    import json

    folder = _image_folder(tmp_path / "grey", ["0", "1"], 28, "L")
    preview = cli("dataset-stats", "--data", folder, "--augment-preview", str(tmp_path / "p.png"), "--format", "json")
    assert preview.exit_code == 0, preview.stderr
    model = tmp_path / "m.safetensors"
    trained = cli("train", "--data", folder, "--epochs", "1", "--arch", "mlp", "--image-size", "28", "--device", "cpu",
                  "--precision", "fp32", "-o", str(model), "-q")
    assert trained.exit_code == 0, trained.stderr
    info = cli("info", str(model), "--format", "json").json()
    config = info["checkpoints"][0]["train_config"] if "checkpoints" in info else info["train_config"]
    assert config["augment"] == "auto" and config["augment_resolved"] == A.DIGIT_AUGMENT
    assert preview.json()["augment"] == parse_augment(config["augment_resolved"]).spec
    assert "augment_resolved" in json.dumps(info)

    # Colour photos: auto would not augment, so there is nothing to preview (train agrees).
    colour = _image_folder(tmp_path / "colour", ["deg135_left", "deg135_right"], 32, "RGB")
    nothing = cli("dataset-stats", "--data", colour, "--augment-preview", str(tmp_path / "q.png"))
    assert nothing.exit_code == 2 and "resolves to none" in nothing.stderr
    flipped = cli("dataset-stats", "--data", colour, "--augment-preview", str(tmp_path / "r.png"), "--augment", "flip,crop:4")
    assert flipped.exit_code == 0 and "orientation" in flipped.stderr
    model2 = tmp_path / "m2.safetensors"
    trained = cli("train", "--data", colour, "--epochs", "1", "--arch", "mlp", "--image-size", "32", "--device", "cpu",
                  "--precision", "fp32", "--augment", "flip,crop:4", "-o", str(model2))
    assert trained.exit_code == 0 and "orientation" in trained.stderr
    label = cli("info", str(model2), "--format", "json").stdout
    assert "aug=flip,crop:4" in label
