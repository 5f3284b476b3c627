"""`cnntools info`: a checkpoint's metadata read from the header alone, without torch."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest
import torch

from cnntools.checkpoint import read_checkpoint, save_checkpoint
from cnntools.output import emitter as output
from cnntools.models import create_model
from test_checkpoint import _meta
from interpret_fixtures import short_digits_run
from test_startup import HEAVY, run_wrapped


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """A real 3-epoch run (digits at 8x8) with its trainer's history."""
    path = tmp_path_factory.mktemp("info") / "run.safetensors"
    history, trainer = short_digits_run(path)
    return path, history, trainer


def test_info_reports_what_the_run_wrote(cli, trained):
    path, history, trainer = trained
    result = cli("info", path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["schema"] == "cnntools.info/1"
    (record,) = doc["checkpoints"]
    meta = read_checkpoint(str(path))[1].to_json()
    assert record["arch"] == trainer.cfg.arch == meta["arch"]["arch"]
    assert record["classes"] == meta["classes"] and record["num_classes"] == len(meta["classes"])
    assert record["normalization"] == {"mean": meta["mean"], "std": meta["std"]}
    assert record["data"] == meta["data"] and record["train_config"] == meta["train_config"]
    # Best epoch: the highest validation accuracy, the first of equals (train's --keep best rule).
    accs = [r["val_acc"] for r in history]
    assert record["history"]["best_epoch"] == accs.index(max(accs)) + 1
    assert record["history"]["kept_epoch"] == record["history"]["best_epoch"]
    assert record["history"]["epochs"] == 3 and record["history"]["final"] == json.loads(json.dumps(history[-1]))
    model = trainer.model
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["written_by"] == {"cnntools": __import__("cnntools").__version__, "torch": torch.__version__}
    # The bytes add up: header + weights + resume state is the whole file.
    size = os.path.getsize(path)
    assert record["bytes"]["file"] == size
    assert record["bytes"]["header"] + record["bytes"]["weights"] + record["bytes"]["resume"] == size
    weights = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    assert record["bytes"]["weights"] == weights and record["resumable"] is True and record["bytes"]["resume"] > 0


def test_parameters_and_buffers_of_a_batchnorm_model_weights_only(cli, tmp_path):
    model = create_model("lenet", 3, 32, 10, batchnorm=True)
    path = tmp_path / "bn.safetensors"
    save_checkpoint(str(path), model, _meta(batchnorm=True))
    (record,) = cli("info", path, "--format", "json").json()["checkpoints"]
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["buffers"] == sum(b.numel() for b in model.buffers())
    assert record["resumable"] is False and record["bytes"]["resume"] == 0
    assert record["history"]["best_epoch"] is None  # no validation accuracy recorded
    # Its card leaves out what the file does not record, and never prints "None".
    card = cli("info", path).stdout
    assert "kept epoch" not in card and "None" not in card and "run: best epoch" not in card
    assert f"{record['parameters']:,}" in card


def test_table_shows_checkpoints_side_by_side_and_csv_has_the_same_names(cli, trained, tmp_path):
    path, _, _ = trained
    table = cli("info", path, path, "--all").stdout.splitlines()
    header = table[0].split()
    assert header[0] == "field" and header[1] == str(path) and "(2)" in table[0]
    fields = {line.split()[0] for line in table[1:]}
    assert {"arch", "classes", "normalization.mean", "history.best_epoch", "parameters", "bytes.weights",
            "written_by.torch", "train_config.lr"} <= fields
    rows = list(csv.DictReader(io.StringIO(cli("info", path, "--format", "csv").stdout)))
    assert set(rows[0]) - {"file"} == fields
    assert rows[0]["resumable"] == "true" and json.loads(rows[0]["classes"]) == [str(i) for i in range(10)]


def test_default_table_is_a_short_card_that_marks_the_kept_epoch(cli, trained):
    path, history, _ = trained
    record = cli("info", path, "--format", "json").json()["checkpoints"][0]
    lines = cli("info", path).stdout.splitlines()
    rows = {line[:24].strip(): line[24:].strip() for line in lines[1:]}
    assert len(lines) < 25 and not any(k.startswith("train_config.") for k in rows)
    kept = record["history"]["kept_epoch"]
    kept_row = history[kept - 1]  # the kept epoch's own numbers, not the run's last epoch
    assert rows["kept epoch"].startswith(f"{kept} of 3 (--keep best")
    assert float(rows["kept epoch: val_acc"]) == pytest.approx(kept_row["val_acc"], rel=1e-5)
    assert float(rows["kept epoch: train_loss"]) == pytest.approx(kept_row["train_loss"], rel=1e-5)
    # Run totals are labelled as the run's.
    assert rows["run: epochs completed"] == "3" and rows["run: updates"] == str(record["history"]["updates"])
    assert rows["run: best epoch"] == str(record["history"]["best_epoch"])
    assert rows["parameters"] == f"{record['parameters']:,}" and rows["arch"] == record["arch"]
    assert rows["classes"].startswith("10: 0 1 2") and rows["input"] == "1×8×8"
    assert rows["bytes"].startswith(f"{record['bytes']['file'] / 1e6:.3g} MB")
    # --all is the full field list, whose names are the JSON keys joined by dots.
    full = cli("info", path, "--all").stdout.splitlines()
    assert {line.split()[0] for line in full[1:]} == set(output.flatten(record)) - {"file"}


def test_stdin_and_refusals(cli, trained, tmp_path):
    path, _, _ = trained
    result = cli("info", "-", "--format", "json", input=path.read_bytes())
    assert result.exit_code == 0 and result.json()["checkpoints"][0]["file"] == "stdin"
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-10])
    result = cli("info", cut)
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "truncated" in result.stderr
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(plain))
    result = cli("info", plain)
    assert result.exit_code == 1 and "not a cnntools checkpoint" in result.stderr


def test_info_never_imports_torch(trained):
    path, _, _ = trained
    proc, modules = run_wrapped(["info", str(path), "--format", "json"], {})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["checkpoints"][0]["parameters"] > 0
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_the_card_names_the_augmentation_auto_resolved_to():
    from cnntools.checkpoint.summary import _training

    cfg = {"opt": "adam", "lr": 0.001, "batch_size": 32, "epochs": 5, "augment": "auto", "augment_resolved": "rotate:10,crop:1"}
    assert "augment rotate:10,crop:1 (auto)" in _training(cfg)
    assert _training({**cfg, "augment": "flip,crop:4", "augment_resolved": "flip,crop:4"}).endswith("augment flip,crop:4")
    assert "augment none (auto)" in _training({**cfg, "augment_resolved": "none"})
