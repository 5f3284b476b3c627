"""`train --config FILE.toml`, `--print-config`, and `--config model.safetensors` (replay)."""

from __future__ import annotations

import tomllib

from train_helpers import jsonl_records, same_weights

FAST = ["--arch", "simple-cnn", "--image-size", "8", "--precision", "fp32", "--device", "cpu", "--batch-size", "64",
        "--augment", "none"]


def _untimed(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in records]


def test_print_config_round_trip_gives_the_same_options_and_numbers(cli, tmp_path, one_torch_thread):
    flags = [*FAST, "--epochs", "1", "--seed", "3", "--opt", "sgd", "--schedule", "cosine"]
    printed = cli("train", *flags, "--print-config")
    assert printed.exit_code == 0, printed.stderr
    doc = tomllib.loads(printed.stdout)
    assert doc["lr"] == 0.01 and doc["opt"] == "sgd" and doc["batch-size"] == 64 and doc["augment"] == "none"
    assert "image-size" in doc and "config" not in doc and "print-config" not in doc
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(printed.stdout)
    again = cli("train", "--config", run_toml, "--print-config")
    assert again.stdout == printed.stdout  # the same resolved options, every one

    direct = cli("train", *flags, "-o", tmp_path / "a.safetensors", "-q", "--format", "jsonl")
    from_file = cli("train", "--config", run_toml, "-o", tmp_path / "b.safetensors", "-q", "--format", "jsonl")
    assert direct.exit_code == 0 and from_file.exit_code == 0, from_file.stderr
    assert _untimed(jsonl_records(direct.stdout)) == _untimed(jsonl_records(from_file.stdout))
    assert same_weights(tmp_path / "a.safetensors", tmp_path / "b.safetensors")


def test_flags_override_the_file_and_the_file_overrides_defaults(cli, tmp_path):
    run_toml = tmp_path / "run.toml"
    run_toml.write_text('lr = 0.5\nepochs = 3\nbatch_size = 16\nopt = "sgd"\nnesterov = true\n')
    doc = tomllib.loads(cli("train", "--config", run_toml, "--lr", "0.02", "--batch-size", "8", "--print-config").stdout)
    assert doc["lr"] == 0.02 and doc["batch-size"] == 8  # the command line wins
    assert doc["epochs"] == 3 and doc["opt"] == "sgd" and doc["nesterov"] is True  # the file beats the defaults
    assert doc["momentum"] == 0.9 and doc["arch"] == "simple-cnn"  # the rest: built-in defaults
    # the order does not matter: --config after the flag it would set
    doc = tomllib.loads(cli("train", "--epochs", "7", "--config", run_toml, "--print-config").stdout)
    assert doc["epochs"] == 7


def test_replay_a_checkpoints_options(cli, tmp_path, one_torch_thread):
    first = tmp_path / "first.safetensors"
    assert cli("train", *FAST, "--epochs", "1", "--seed", "5", "--label-smoothing", "0.1", "-o", first, "-q").exit_code == 0
    doc = tomllib.loads(cli("train", "--config", first, "--epochs", "4", "--print-config").stdout)
    assert doc["seed"] == 5 and doc["label-smoothing"] == 0.1 and doc["image-size"] == 8 and doc["epochs"] == 4
    replay = tmp_path / "replay.safetensors"
    result = cli("train", "--config", first, "-o", replay, "-q")
    assert result.exit_code == 0, result.stderr
    assert same_weights(first, replay)  # the same options and seed: the same run
    from cnntools.checkpoint import read_metadata

    # lr and augment are written out in the replayed options; the label stays the original's.
    assert read_metadata(replay).label == read_metadata(first).label == "simple-cnn bs=64+ls=0.1+no-aug"


def test_a_toml_of_the_defaults_keeps_the_default_label(cli, tmp_path, one_torch_thread):
    printed = cli("train", "--image-size", "8", "--epochs", "1", "--print-config").stdout
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(printed)
    assert 'augment = "rotate:10,crop:1"' in printed and "lr = 0.001" in printed  # resolved, written out
    out = tmp_path / "m.safetensors"
    assert cli("train", "--config", run_toml, "--batch-size", "128", "-o", out, "-q").exit_code == 0
    from cnntools.checkpoint import read_metadata

    assert read_metadata(out).label == "simple-cnn bs=128"


def test_config_errors_are_one_line(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("batch-szie = 4\n")
    result = cli("train", "--config", bad)
    assert result.exit_code == 2 and "unknown config key 'batch-szie'" in result.stderr
    bad.write_text('opt = "rmsprop"\n')
    assert "rmsprop" in cli("train", "--config", bad).stderr
    bad.write_text("[train]\nepochs = 1\n")
    assert "flat" in cli("train", "--config", bad).stderr
    bad.write_text("epochs = \n")
    assert "not a valid TOML file" in cli("train", "--config", bad).stderr
    assert "no such file" in cli("train", "--config", tmp_path / "missing.toml").stderr
    ckpt = tmp_path / "m.safetensors"
    assert cli("train", *FAST, "--epochs", "1", "-o", ckpt, "-q").exit_code == 0
    same = cli("train", "--config", ckpt, "-o", ckpt)
    assert same.exit_code == 1 and "write the new run elsewhere" in same.stderr
    good = tmp_path / "good.toml"
    good.write_text("epochs = 2\n")
    both = cli("train", "--config", good, "--resume", ckpt)
    assert both.exit_code == 1 and "leave --config out" in both.stderr


def test_the_mnist_recipe_is_a_config_train_takes(cli):
    """examples/mnist-fast.toml (docs/performance.md): every key a train option, the recipe's values kept."""
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "examples" / "mnist-fast.toml"
    result = cli("train", "--config", str(recipe), "--print-config")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    for line in ('arch = "twoconv-bn"', "epochs = 7", "batch-size = 64", "lr = 0.1", 'opt = "sgd"', "nesterov = true",
                 'schedule = "onecycle"', 'augment = "rotate:10,crop:2"', "label-smoothing = 0.1", "val-split = 0.0"):
        assert line in text, line
