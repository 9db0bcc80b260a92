"""``t5ort serve``: an HTTP server for T5 (TGI- and OpenAI-compatible), with per-step log-probs and raw logits.

    app = t5ort.serve.create_app(t5ort.load("out_dir"), t5ort.serve.ServeConfig(max_batch_size=8))

Layers: :mod:`.schemas` (wire formats) and :mod:`.validation` (requests -> checked jobs);
:mod:`.scheduler` (queue and batcher, no HTTP); :mod:`.app` (FastAPI routes); :mod:`.server` (uvicorn).
Needs the ``[serve]`` extra (fastapi, uvicorn, prometheus-client).
"""

from .config import SecurityConfig, ServeConfig

__all__ = ["DynamicBatcher", "Scheduler", "SecurityConfig", "ServeConfig", "create_app"]


def __getattr__(name: str):
    """The app and the scheduler are imported when first used, so that ``t5ort.serve.config`` (which the CLI
    reads to build its parser) does not need fastapi where the ``[serve]`` extra is not installed."""
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("DynamicBatcher", "Scheduler"):
        from . import scheduler

        return getattr(scheduler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
