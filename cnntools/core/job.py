"""Where this process stands in a distributed job, read from the environment alone, so the
emitter can prefix `rank N: ` and hand errors to the launcher without importing the
distributed machinery (`cnntools.training.distributed` builds on these)."""

from __future__ import annotations

import os

# Set by `train --nproc` for the processes it starts: they leave the one error line to it.
LAUNCHED_ENV = "CNNTOOLS_LAUNCHED"


def rank_name() -> str | None:
    """RANK as torchrun set it, when this process is part of a job (None when alone)."""
    return os.environ.get("RANK") if "WORLD_SIZE" in os.environ else None


def launched_by_nproc() -> bool:
    """Started by `train --nproc`, whose launcher reports the job's errors."""
    return bool(os.environ.get(LAUNCHED_ENV))


def record_error(message: str, secondary: bool = False) -> None:
    """Write the error where torchelastic reads it (TORCHELASTIC_ERROR_FILE, set by torchrun),
    so the launcher's report names it; `secondary` marks an error caused by another process."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not error_file:
        return
    import json
    import time

    record = {"message": message, "timestamp": str(int(time.time())), "cnntools": {"rank": rank_name(), "secondary": secondary}}
    try:
        with open(error_file, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
    except OSError:
        pass
