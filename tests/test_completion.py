"""Value completion in a real bash with the generated script (and zsh/fish's protocol):
architectures, datasets, devices, checkpoints, and a checkpoint's layers and classes read from
its header without torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnntools import completion
from cnntools.docs import REPO
from test_startup import HEAVY, run_wrapped

CLASSES = ["cat", "dog", "bull mastiff"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with a checkpoint, another file and a sub-folder, and a `cnntools` on PATH
    that runs this checkout."""
    from cnntools.checkpoint import save_checkpoint
    from cnntools.models import create_model

    root = tmp_path_factory.mktemp("complete")
    model = create_model("lenet", 3, 32, len(CLASSES), batchnorm=True)
    meta = {
        "arch": {"arch": "lenet", "in_channels": 3, "image_size": 32, "num_classes": len(CLASSES), "batchnorm": True},
        "classes": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 32, "in_channels": 3,
    }
    save_checkpoint(str(root / "net.safetensors"), model, meta)
    (root / "notes.txt").write_text("x")
    (root / "runs").mkdir()
    binary = root / "bin"
    binary.mkdir()
    script = binary / "cnntools"
    script.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m cnntools \"$@\"\n")
    script.chmod(0o755)
    return root, model


def bash_complete(root: Path, words: list[str]) -> list[str]:
    """COMPREPLY of the generated bash completion for `words` (the last one being completed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (
        f"source {REPO / 'completions' / 'cnntools.bash'}\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        "_cnntools_completion cnntools\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    env = {**os.environ, "PATH": f"{root / 'bin'}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_static_names_are_the_registries():
    from cnntools.data.registry import KINDS
    from cnntools.models import ARCHITECTURES, get_architecture

    get_architecture("lenet")  # loads every family
    assert set(completion.ARCH_NAMES) == set(ARCHITECTURES)
    assert set(completion.DATA_NAMES) == set(KINDS)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completes_values(workdir):
    root, model = workdir
    assert {"lenet", "simple-cnn", "torchvision:"} <= set(bash_complete(root, ["cnntools", "train", "--arch", ""]))
    assert bash_complete(root, ["cnntools", "rf-calc", "--arch", "res"]) == ["resnet18", "resnet18-imagenet"]
    data = bash_complete(root, ["cnntools", "dataset-stats", "--data", ""])
    assert {"digits", "cifar10", "fake", "runs/", "bin/"} <= set(data) and "notes.txt" not in data
    assert {"cpu", "cuda", "mps", "auto"} <= set(bash_complete(root, ["cnntools", "eval", "net.safetensors", "--device", ""]))
    # Model arguments: checkpoints and folders only, plus torchvision:
    assert set(bash_complete(root, ["cnntools", "eval", ""])) == {"net.safetensors", "runs/", "bin/", "torchvision:"}
    # Layers and classes of the checkpoint already on the line, from its header.
    layers = bash_complete(root, ["cnntools", "featmaps", "net.safetensors", "--layer", ""])
    expected = [name for name, m in model.named_modules() if name and any(True for _ in m.parameters(recurse=False))]
    assert set(expected) <= set(layers) and "features" in layers
    assert bash_complete(root, ["cnntools", "filters", "net.safetensors", "-l", "l"]) == ["last"]
    targets = bash_complete(root, ["cnntools", "saliency", "net.safetensors", "--target", ""])
    assert targets == ["pred", "true", *CLASSES]
    assert bash_complete(root, ["cnntools", "rf"]) == ["rf-calc"]


def test_zsh_and_fish_protocols(workdir):
    root, _ = workdir
    env = {**os.environ, "PYTHONPATH": str(REPO), "_TYPER_COMPLETE_ARGS": "cnntools saliency net.safetensors --target "}
    zsh = subprocess.run([sys.executable, "-m", "cnntools"], cwd=root, capture_output=True, text=True, timeout=120,
                         env={**env, "_CNNTOOLS_COMPLETE": "complete_zsh"})
    assert "bull mastiff" in zsh.stdout and "pred" in zsh.stdout
    fish = subprocess.run([sys.executable, "-m", "cnntools"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**env, "_CNNTOOLS_COMPLETE": "complete_fish", "_TYPER_COMPLETE_FISH_ACTION": "get-args"})
    assert "bull mastiff" in fish.stdout.splitlines()[-1] or "bull mastiff" in fish.stdout


def test_completing_layers_imports_no_torch(workdir):
    root, _ = workdir
    cwd = os.getcwd()
    os.chdir(root)
    try:
        proc, modules = run_wrapped([], {"_CNNTOOLS_COMPLETE": "complete_bash",
                                         "COMP_WORDS": "cnntools featmaps net.safetensors --layer ", "COMP_CWORD": "4"})
    finally:
        os.chdir(cwd)
    assert "features.0" in proc.stdout.split()
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
