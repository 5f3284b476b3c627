"""Quick property-based fuzzing in the suite (see tests/fuzz_cases.py for the properties and
tests/benchmarks/fuzz.py for the long run): calculator arguments, mutated checkpoints and
mutated images end in a result or one clean `Error:` line."""

from __future__ import annotations

import pytest

import fuzz_cases

EXAMPLES = 30  # per property; the same cases every run (derandomized)


@pytest.mark.parametrize("name", sorted(fuzz_cases.properties(EXAMPLES)))
def test_fuzz(name, monkeypatch):
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    fuzz_cases.properties(EXAMPLES)[name]()
