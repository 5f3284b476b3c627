"""Helpers shared by the training tests: a checkpoint's weights, and the records of --format jsonl."""

from __future__ import annotations

import json

import torch

from cnntools.checkpoint import model_state, read_checkpoint


def checkpoint_weights(path) -> dict:
    """The model's tensors in a checkpoint file (resume state left out)."""
    return model_state(read_checkpoint(str(path))[0])


def same_weights(a, b) -> bool:
    """True when two checkpoints hold exactly the same weights."""
    wa, wb = checkpoint_weights(a), checkpoint_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def jsonl_records(stdout: str) -> list[dict]:
    """One dict per non-blank line of `--format jsonl` output."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]
