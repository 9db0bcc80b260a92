"""``t5ort serve``: an HTTP server for T5 (TGI- and OpenAI-compatible), with per-step log-probs and raw logits.

    app = t5ort.serve.create_app(t5ort.load("out_dir"), t5ort.serve.ServeConfig(max_batch_size=8))

Layers: :mod:`.schemas` (wire formats) and :mod:`.validation` (requests -> checked jobs);
:mod:`.scheduler` (queue and batcher, no HTTP); :mod:`.app` (FastAPI routes); :mod:`.server` (uvicorn).
Needs the ``[serve]`` extra (fastapi, uvicorn, prometheus-client).
"""

from .app import create_app
from .config import ServeConfig
from .scheduler import DynamicBatcher, Scheduler

__all__ = ["DynamicBatcher", "Scheduler", "ServeConfig", "create_app"]
