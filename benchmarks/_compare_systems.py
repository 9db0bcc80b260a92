"""Kept for the scripts that call ``prepare``: the systems and the harness now live in ``t5ort.bench``."""

from __future__ import annotations

from pathlib import Path

from _model import checkpoint

from t5ort.bench import systems

ALIASES = {"ct2-fp32": "ctranslate2", "ct2-int8": "ctranslate2-int8"}


def artifact_dir(system: str, workdir: Path) -> Path:
    """Where a peer's artifact made from the work directory's checkpoint lives."""
    workdir = Path(workdir)
    return systems.artifact_dir(ALIASES.get(system, system), checkpoint(workdir), workdir)


def prepare(system: str, workdir: str) -> None:
    """Make a peer's artifact (``optimum``, ``ct2-fp32``, ``ct2-int8``) from the work directory's checkpoint."""
    workdir = Path(workdir)
    kind = ALIASES.get(system, system)
    if not systems.artifact_ready(kind, checkpoint(workdir), workdir):
        systems.prepare(kind, str(checkpoint(workdir)), str(workdir))
