"""The data a model runs on (`cnntools.data.load_for_model`): the checkpoint's recipe and the
user's overrides, labels mapped onto the model's classes, images fitted to its input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnntools.checkpoint.metadata import DataRecipe
from cnntools.data import load_for_model, load_split, match_classes, model_recipe
from cnntools.inference.preprocessing import Preprocessing
from cnntools.core.errors import CnnError

DIGITS = [str(i) for i in range(10)]
GREY8 = Preprocessing.plain(1, 8)  # digits as they are: nothing to fit


def test_labels_are_mapped_onto_the_models_classes_by_name():
    plain = load_split("digits", "test")
    reversed_classes = DIGITS[::-1]
    got = load_for_model(DataRecipe("digits"), "test", GREY8, reversed_classes)
    assert got.classes == reversed_classes
    assert torch.equal(got.labels, 9 - plain.labels)  # class "3" is the model's output 6
    assert torch.equal(got.images, plain.images)
    # A model that knows more classes than the dataset names: each label goes to its name.
    wider = ["cat", *DIGITS[::2], "dog", *DIGITS[1::2]]
    got = load_for_model(DataRecipe("digits"), "test", GREY8, wider)
    assert got.classes == wider
    assert [wider[i] for i in got.labels.tolist()] == [DIGITS[i] for i in plain.labels.tolist()]


def test_unknown_class_names_with_the_same_count_are_taken_by_index_with_a_warning(capsys):
    plain = load_split("digits", "test")
    letters = list("abcdefghij")
    got = load_for_model(DataRecipe("digits"), "test", GREY8, letters)
    assert got.classes == letters and torch.equal(got.labels, plain.labels)
    assert "digits names its classes differently from the model's; labels are compared by index" in capsys.readouterr().err
    # Messages name the dataset as the user gave it.
    load_for_model(DataRecipe("digits"), "test", Preprocessing.plain(3, 32), letters, data="fake:20")
    assert "Warning: fake:20 names its classes differently" in capsys.readouterr().err
    # Same names, same order: nothing changes and nothing is said.
    assert match_classes(plain, DIGITS) is plain
    assert capsys.readouterr().err == ""


def test_a_dataset_the_model_cannot_label_is_refused():
    with pytest.raises(CnnError, match=r"digits has 10 classes that the model \(3 classes\) does not know"):
        load_for_model(DataRecipe("digits"), "test", GREY8, ["a", "b", "c"])
    # Names partly known are not enough either (here 9 of 10, and 11 outputs).
    with pytest.raises(CnnError, match="does not know"):
        load_for_model(DataRecipe("digits"), "test", GREY8, DIGITS[:9] + ["x", "y"])


def test_overrides_keep_or_drop_the_recipe():
    recipe = DataRecipe("digits", "/data/digits", 0.2, 7)
    assert model_recipe(recipe) == recipe
    assert model_recipe(recipe, data="") == recipe  # an empty --data names nothing
    # --data naming the recorded dataset keeps its folder, validation fraction and seed.
    assert model_recipe(recipe, data="digits") == recipe
    assert model_recipe(recipe, data="digits", data_dir="/elsewhere") == DataRecipe("digits", "/elsewhere", 0.2, 7)
    # Another dataset: none of the three describe it.
    assert model_recipe(recipe, data="fake:20") == DataRecipe("fake:20", None, 0.0, 0)
    assert model_recipe(recipe, data="fake:20", data_dir="/d") == DataRecipe("fake:20", "/d", 0.0, 0)
    # Nothing recorded and nothing given.
    with pytest.raises(CnnError, match="^m.safetensors: no dataset recorded in the model; name one with --data$"):
        model_recipe(DataRecipe(), name="m.safetensors")
    assert model_recipe(DataRecipe(), data="digits") == DataRecipe("digits")


def test_the_recorded_validation_split_is_rebuilt_exactly():
    recipe = DataRecipe("digits", None, 0.2, 7)
    held = load_for_model(recipe, "val", GREY8, DIGITS)
    want = load_split("digits", "val", val_split=0.2, seed=7)
    assert len(held) == len(want) > 250 and torch.equal(held.images, want.images)
    assert not torch.equal(held.images, load_split("digits", "val", val_split=0.2, seed=8).images)
    train = load_for_model(recipe, "train", GREY8, DIGITS)
    assert len(train) + len(held) == len(load_split("digits", "train"))
    # --data naming another dataset reads it with its own splits: fake has no validation split.
    with pytest.raises(CnnError, match="fake:20 has no validation split"):
        load_for_model(recipe, "val", Preprocessing.plain(3, 32), [f"class{i}" for i in range(10)], data="fake:20")


def test_images_are_fitted_to_the_model_input_unless_it_resizes_itself():
    plain = load_split("digits", "test")
    rgb16 = Preprocessing.plain(3, 16)
    got = load_for_model(DataRecipe("digits"), "test", rgb16, DIGITS)
    assert got.images.shape == (359, 3, 16, 16) and got.images.dtype == torch.uint8
    assert torch.equal(got.images, rgb16.fit(plain.images))
    # A resize rule (torchvision's resize + centre crop) is applied once, by the forward pass.
    resizing = Preprocessing((0.5,) * 3, (0.25,) * 3, 16, 3, resize=20)
    assert torch.equal(load_for_model(DataRecipe("digits"), "test", resizing, DIGITS).images, plain.images)


def test_a_mapped_folder_stays_mapped_when_fitted(tmp_path, monkeypatch):
    """Fitting streams into a new store: the dataset is never made in memory."""
    monkeypatch.setenv("CNNTOOLS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(3):
            (tmp_path / "pets" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "pets" / cls / f"{i}.png")
    spec = str(tmp_path / "pets")
    grey = Preprocessing.plain(1, 12)
    got = load_for_model(DataRecipe(), "train", grey, ["dog", "cat"], data=spec)
    native = load_split(spec, "train", image_size=12)
    assert native.mapped and got.mapped and got.images.shape == (6, 1, 12, 12)
    assert torch.equal(got.images, grey.fit(native.images))
    assert torch.equal(got.labels, 1 - native.labels)  # cat is the model's output 1
