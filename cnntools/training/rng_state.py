"""Every random generator's state (Python, NumPy, torch, CUDA) as checkpointable data, so a
resumed run draws exactly what the uninterrupted run would have."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    state = {
        "python": list(random.getstate()),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def decorrelate_ranks(seed: int, updates: int, rank: int) -> None:
    """Give each DDP rank past 0 its own torch stream, from the run's seed and position."""
    # Every rank starts from the same seed (and a resumed run from rank 0's RNG state);
    # dropout masks must still differ between ranks (timm seeds each rank apart too).
    # Rank 0 keeps the stream a single process would have.
    if rank:
        torch.manual_seed((seed * 1_000_003 + updates) * 4099 + rank)
