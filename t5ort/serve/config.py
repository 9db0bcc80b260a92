"""The server's limits and settings: one frozen dataclass, checked before the server starts."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching settings of ``t5ort serve``. The defaults are safe on a public port.

    - ``batching``: ``"inflight"`` (the default: requests join and leave the running decode batch at
      every step, :mod:`t5ort.serve.inflight`), ``"dynamic"`` (compatible requests collected within
      ``batch_window_ms`` run as one call until the longest ends) or ``"none"`` (one request at a time).
    - ``max_batch_size``: dynamic batching: requests run together as one ``generate`` (rows: requests x n).
    - ``max_batch_rows``, ``max_batch_tokens``: in-flight batching: decoder rows in the running batch, and
      its cache budget in positions (rows x the longest max_new_tokens among them); what does not fit waits.
    - ``max_speculative_rows``: in-flight batching: a greedy request asking for ``prompt_lookup_num_tokens``
      is decoded speculatively (its own verify pass per round) only while the rows in flight, its own
      included, are at most this many; on a busier server it joins the batch as plain greedy (the same
      tokens). 0: never speculate.
    - ``max_queue``: requests waiting for a batch; one more is answered 429 with Retry-After.
    - ``max_input_tokens``, ``max_new_tokens``: per-request caps (tokens of the input, tokens generated).
    - ``default_max_new_tokens``: what a request that names no ``max_new_tokens`` / ``max_tokens`` gets.
    - ``max_top_n_tokens``: cap on TGI's ``top_n_tokens`` and OpenAI's ``logprobs``.
    - ``max_return_sequences``: cap on ``n`` / ``num_return_sequences`` / ``num_beams``.
    - ``max_body_bytes``: request bodies over this are refused with 413.
    - ``max_logits_bytes``: budget of a raw-logits (.npz) answer, checked before any work.
    - ``request_timeout``: seconds from arrival to the last token; a request over it is cancelled (504).
    - ``batch_window_ms``: how long the batcher waits for compatible requests once one is waiting.
    - ``shutdown_grace``: seconds in-flight requests get to finish after SIGTERM.
    - ``drain_delay``: seconds after SIGTERM during which ``/ready`` answers 503 but requests are still
      accepted and served, so that load balancers polling /ready stop sending before the port closes
      (0: close at once); a second signal stops at once.
    - ``sse_keepalive``: a stream that sends nothing for this many seconds (waiting in the queue, a slow
      step) gets an SSE comment line (``: keepalive``), as TGI sends, so that proxies do not close it
      as idle; 0: never.
    - ``encoder_cache_mb``: the budget of the cache of recent sources' encoder outputs (a request whose
      input ids equal a recent one's skips the encoder); 0: off; None (the default): sized from the model,
      as many bytes as 64 sources of 64 tokens take, at most 256 MiB.
    - ``model_name``: the name ``/v1/models`` lists and ``/v1/completions`` expects.
    """

    batching: str = "inflight"
    max_batch_size: int = 8
    max_batch_rows: int = 32
    max_batch_tokens: int = 8192
    max_speculative_rows: int = 2
    max_queue: int = 64
    max_input_tokens: int = 512
    max_new_tokens: int = 256
    default_max_new_tokens: int = 20
    max_top_n_tokens: int = 5
    max_return_sequences: int = 4
    max_body_bytes: int = 1 << 20
    max_logits_bytes: int = 256 << 20
    request_timeout: float = 60.0
    batch_window_ms: float = 2.0
    shutdown_grace: float = 30.0
    drain_delay: float = 0.0
    sse_keepalive: float = 15.0
    encoder_cache_mb: float | None = None
    model_name: str = "t5ort"

    def validate(self) -> ServeConfig:
        if self.batching not in ("inflight", "dynamic", "none"):
            raise ValueError(f"ServeConfig.batching must be 'inflight', 'dynamic' or 'none', got {self.batching!r}.")
        for name in ("max_batch_size", "max_batch_rows", "max_batch_tokens", "max_queue", "max_input_tokens", "max_new_tokens", "default_max_new_tokens",
                     "max_return_sequences", "max_body_bytes", "max_logits_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServeConfig.{name} must be an int >= 1, got {value!r}.")
        if isinstance(self.max_speculative_rows, bool) or not isinstance(self.max_speculative_rows, int) \
                or self.max_speculative_rows < 0:
            raise ValueError(f"ServeConfig.max_speculative_rows must be an int >= 0, got {self.max_speculative_rows!r}.")
        if isinstance(self.max_top_n_tokens, bool) or not isinstance(self.max_top_n_tokens, int) \
                or self.max_top_n_tokens < 0:
            raise ValueError(f"ServeConfig.max_top_n_tokens must be an int >= 0, got {self.max_top_n_tokens!r}.")
        if self.default_max_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"ServeConfig.default_max_new_tokens ({self.default_max_new_tokens}) must not exceed "
                f"max_new_tokens ({self.max_new_tokens})."
            )
        for name in ("request_timeout", "shutdown_grace"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"ServeConfig.{name} must be a number of seconds > 0, got {value!r}.")
        for name in ("batch_window_ms", "drain_delay", "sse_keepalive"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"ServeConfig.{name} must be >= 0, got {value!r}.")
        cache = self.encoder_cache_mb
        if cache is not None and (isinstance(cache, bool) or not isinstance(cache, (int, float)) or not cache >= 0):
            raise ValueError(f"ServeConfig.encoder_cache_mb must be a number of MiB >= 0 or None, got {cache!r}.")
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError(f"ServeConfig.model_name must be a non-empty string, got {self.model_name!r}.")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


_KEY = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: a key travels in an HTTP header
_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")  # scheme://host[:port], as browsers send Origin


@dataclass(frozen=True)
class SecurityConfig:
    """Who may call ``t5ort serve``. Apart from :class:`ServeConfig` so that keys never reach ``/info`` or a log line.

    - ``api_keys``: with any, every model route (TGI, OpenAI, /score, /logits, /info) needs
      ``Authorization: Bearer <one of them>``; probes, /metrics, /docs and the playground page stay open.
    - ``metrics_api_keys``: with any, ``/metrics`` needs one of these (and only these).
    - ``cors_allow_origins``: browser origins (``https://host[:port]``, or ``*``) allowed to call the
      server from their pages; none (the default): no CORS headers at all.

    The keys are left out of ``repr``.
    """

    api_keys: tuple[str, ...] = field(default=(), repr=False)
    metrics_api_keys: tuple[str, ...] = field(default=(), repr=False)
    cors_allow_origins: tuple[str, ...] = ()

    def validate(self) -> SecurityConfig:
        for name in ("api_keys", "metrics_api_keys", "cors_allow_origins"):
            if not isinstance(getattr(self, name), tuple):
                raise ValueError(f"SecurityConfig.{name} must be a tuple of strings.")
        for name in ("api_keys", "metrics_api_keys"):
            for i, key in enumerate(getattr(self, name)):
                if not isinstance(key, str) or not _KEY.match(key):
                    # the key itself is not quoted: it may be a real one with a typo
                    raise ValueError(f"SecurityConfig.{name}[{i}]: an API key must be a non-empty string of visible "
                                     "ASCII characters (no spaces); generate one with "
                                     "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`.")
        for origin in self.cors_allow_origins:
            if not isinstance(origin, str) or not (origin == "*" or _ORIGIN.match(origin)):
                raise ValueError(f"SecurityConfig.cors_allow_origins: {origin!r} is not an origin; give "
                                 "scheme://host[:port] as the browser sends it (e.g. https://app.example.com), or *.")
        return self
