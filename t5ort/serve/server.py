"""Run an app under uvicorn on one host/port; SIGTERM or Ctrl-C stops accepting, finishes in-flight work, exits 0.

With ``drain_delay``, the first signal only makes ``/ready`` answer 503 ("draining") for that many seconds,
while requests are still accepted and served; then the server stops as above. A second signal stops at once.
"""

from __future__ import annotations

import datetime
import json
import logging
import signal
import time

from .app import RequestIdFilter

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
log = logging.getLogger("t5ort.serve")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, method, path, status,
    duration_ms (null where a line has none), and exception when there is one. Headers are never logged."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **{name: getattr(record, name, None) for name in ("request_id", "method", "path", "status", "duration_ms")},
        }
        if line["request_id"] == "-":
            line["request_id"] = None
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", json_output: bool = False) -> None:
    """Log lines on stderr, each with its request id ("-" outside a request); ``json_output``: as JSON objects."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_output else logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _draining_server(config, state, drain_delay: float):
    """A uvicorn server whose first SIGTERM/SIGINT drains (``state.drain()``) for ``drain_delay`` s before stopping."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        drain_signal: int | None = None
        drain_until = 0.0
        announced = False

        def handle_exit(self, sig, frame) -> None:
            state.drain()  # only sets the phase: safe in a signal handler
            if drain_delay > 0 and self.drain_signal is None and not self.should_exit:
                self.drain_signal, self.drain_until = sig, time.monotonic() + drain_delay
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.drain_signal is not None and not self.should_exit:
                if not self.announced:
                    self.announced = True
                    log.info("draining: /ready answers 503, requests are still served for %g s (signal %d)",
                             drain_delay, self.drain_signal)
                if time.monotonic() >= self.drain_until:
                    super().handle_exit(self.drain_signal, None)
            return await super().on_tick(counter)

    return DrainingServer(config)


def tls_options(keyfile: str | None, certfile: str | None, ca_certs: str | None) -> dict:
    """uvicorn's TLS settings, checked now (the files load into a TLS context) so that errors name the flag.

    ``ca_certs``: clients must present a certificate signed by one of these CAs (mutual TLS).
    """
    import ssl

    if not keyfile and not certfile:
        if ca_certs:
            raise ValueError("--ssl-ca-certs checks client certificates over TLS: give --ssl-keyfile and "
                             "--ssl-certfile too.")
        return {}
    if not (keyfile and certfile):
        raise ValueError("TLS needs both --ssl-keyfile (the private key) and --ssl-certfile (the certificate chain).")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile}: cannot load them as a PEM certificate "
                         f"chain and its private key ({exc}).") from exc
    options = {"ssl_keyfile": keyfile, "ssl_certfile": certfile}
    if ca_certs:
        try:
            context.load_verify_locations(cafile=ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--ssl-ca-certs {ca_certs}: cannot load it as PEM CA certificates ({exc}).") from exc
        options.update(ssl_ca_certs=ca_certs, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def run(app, *, host: str, port: int, shutdown_grace: float, drain_delay: float = 0.0,
        log_level: str = "info", tls: dict | None = None) -> int:
    """Serve ``app`` (from :func:`~t5ort.serve.create_app`) until SIGTERM/SIGINT; 0 after a graceful shutdown.

    ``tls``: from :func:`tls_options`. If the model cannot be loaded, the server stops and its load error is raised.
    """
    import uvicorn

    state = app.state.t5ort
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(max(1, shutdown_grace)), log_level=log_level,
                            **(tls or {}))
    server = _draining_server(config, state, drain_delay)
    state.on_load_failure = lambda _exc: setattr(server, "should_exit", True)
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
    if state.load_error is not None:
        raise state.load_error
    if not server.started:
        return 1
    log.info("stopped%s", f" on signal {received[0]}" if received else "")
    return 0
