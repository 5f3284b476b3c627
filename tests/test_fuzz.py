"""Quick property-based fuzzing in the suite (see tests/fuzz_cases.py for the properties and
tests/benchmarks/fuzz.py for the long run): every reader — calculator arguments, checkpoints
(bytes, safetensors headers, metadata), predictions CSVs, matrix files, CIFAR batches, MNIST idx
files, images and folders — ends in a result or one clean `Error:` line, in bounded time and memory."""

from __future__ import annotations

import pytest

import fuzz_cases

EXAMPLES = 30  # per property; the same cases every run (derandomized)
# Readers that decode images or a dataset per case cost more: fewer cases keep the suite quick.
FEWER = {"CIFAR batches": 15, "MNIST idx": 15, "folders": 10, "checkpoint metadata": 20, "safetensors headers": 20, "history files": 20}


@pytest.mark.parametrize("name", sorted(fuzz_cases.properties(EXAMPLES)))
def test_fuzz(name, monkeypatch):
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    fuzz_cases.properties(FEWER.get(name, EXAMPLES))[name]()
