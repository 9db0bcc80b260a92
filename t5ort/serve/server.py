"""Run an app under uvicorn on one host/port; SIGTERM or Ctrl-C stops accepting, finishes in-flight work, exits 0."""

from __future__ import annotations

import logging
import signal

from .app import RequestIdFilter

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str = "info") -> None:
    """Log lines on stderr, each with its request id ("-" outside a request)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def run(app, *, host: str, port: int, shutdown_grace: float, log_level: str = "info") -> int:
    """Serve ``app`` until SIGTERM/SIGINT; return 0 after a graceful shutdown."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(max(1, shutdown_grace)), log_level=log_level)
    server = uvicorn.Server(config)
    received: list[int] = []
    # uvicorn re-raises the signal that stopped it once it has shut down; with these handlers in
    # place that re-raise is recorded instead of killing the process, so a graceful stop exits 0.
    previous = {sig: signal.signal(sig, lambda s, _frame: received.append(s))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        return 1
    logging.getLogger("t5ort.serve").info("stopped%s", f" on signal {received[0]}" if received else "")
    return 0
