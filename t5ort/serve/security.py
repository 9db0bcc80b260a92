"""API keys: an ASGI middleware that refuses model routes without ``Authorization: Bearer <key>``.

It runs before the body is read, so an unauthenticated client learns nothing but 401 (not whether its
body is too big or malformed). Keys are compared in constant time, as SHA-256 digests (so that neither a
key's characters nor its length leak through timing), against every configured key; they are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Callable

from .errors import error_response

log = logging.getLogger("t5ort.serve")

# Routes any client may call with API keys set: probes, the API's description and the playground page
# (which asks for the key and sends it with its own calls). /metrics has a key of its own.
OPEN_PATHS = frozenset({
    "/live", "/ready", "/health", "/v2/health/live", "/v2/health/ready",
    "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/playground",
})
METRICS_PATH = "/metrics"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("latin-1")).digest()


class KeySet:
    """Accepted keys, held as digests; :meth:`accepts` compares against each one in constant time."""

    def __init__(self, keys: tuple[str, ...]):
        self._digests = tuple(_digest(k) for k in keys)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, given: str) -> bool:
        candidate = _digest(given)
        ok = False
        for digest in self._digests:  # no early exit: every key is compared
            ok |= hmac.compare_digest(candidate, digest)
        return ok


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of the first ``Authorization: Bearer <token>`` header, else None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class ApiKeyAuth:
    """Refuses requests without a valid key with 401, ``WWW-Authenticate: Bearer`` and the route's error body.

    ``api_keys`` guard every path but :data:`OPEN_PATHS` and ``/metrics``; ``metrics_keys`` guard ``/metrics``.
    An empty key set leaves its paths open. ``on_refused(path)`` counts each refusal.
    """

    def __init__(self, app, api_keys: tuple[str, ...], metrics_keys: tuple[str, ...],
                 on_refused: Callable[[str], None]):
        self.app = app
        self.api_keys = KeySet(api_keys)
        self.metrics_keys = KeySet(metrics_keys)
        self.on_refused = on_refused

    def _keys_for(self, path: str) -> KeySet | None:
        if path == METRICS_PATH:
            return self.metrics_keys or None
        if path in OPEN_PATHS:
            return None
        return self.api_keys or None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        keys = self._keys_for(scope["path"])
        if keys is None:
            return await self.app(scope, receive, send)
        token = bearer_token(scope.get("headers") or [])
        if token is not None and keys.accepts(token):
            return await self.app(scope, receive, send)
        path = scope["path"]
        self.on_refused(path)
        if token is None:
            reason = "no API key"
            message = "this route needs an API key: send the header 'Authorization: Bearer <key>'."
            challenge = 'Bearer realm="t5ort"'
        else:
            reason = "an API key that is not valid"
            message = "the API key is not valid; send 'Authorization: Bearer <key>' with a key this server accepts."
            challenge = 'Bearer realm="t5ort", error="invalid_token"'
        log.warning("refused %s %s: %s", scope.get("method", "-"), path, reason)
        response = error_response(401, message, "unauthorized", path, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)
