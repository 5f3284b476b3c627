"""PLACEHOLDER — being written; replace this whole module."""

from cnntools.output import CnnError


def main() -> None:
    """Not written yet."""
    raise CnnError("not written yet")
