"""The old name of :mod:`t5ort.bench.shapes` (benchmark scripts import it from here)."""

from .shapes import FLAN_T5_BASE, T5_SMALL, build_checkpoint

__all__ = ["FLAN_T5_BASE", "T5_SMALL", "build_checkpoint"]
