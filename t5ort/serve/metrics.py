"""Prometheus metrics of one server, in their own registry (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STEP = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServeMetrics:
    """Named and counted where the event happens: the HTTP layer counts requests, the scheduler the rest."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("t5ort_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.failures = Counter("t5ort_request_failures", "requests that ended without an answer, by reason "
                                "(cancelled: the client went away; timeout; invalid; internal; overloaded; "
                                "unauthorized: no or a wrong API key)",
                                ["reason"], registry=r)
        self.queue_depth = Gauge("t5ort_queue_depth", "requests waiting for a batch", registry=r)
        self.rows_in_flight = Gauge("t5ort_batch_current_rows", "decoder rows of the running batch", registry=r)
        self.batch_size = Histogram("t5ort_batch_size", "requests per batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
                                    registry=r)
        self.batch_seconds = Histogram("t5ort_batch_inference_seconds", "wall time of one batch", buckets=_LATENCY,
                                       registry=r)
        self.queue_seconds = Histogram("t5ort_queue_seconds", "time a request waited in the queue",
                                       buckets=_LATENCY, registry=r)
        self.ttft_seconds = Histogram("t5ort_time_to_first_token_seconds", "arrival to first token",
                                      buckets=_LATENCY, registry=r)
        self.step_seconds = Histogram("t5ort_time_per_token_seconds", "wall time of one decoding step of a batch",
                                      buckets=_STEP, registry=r)
        self.request_seconds = Histogram("t5ort_request_seconds", "arrival to last token", buckets=_LATENCY,
                                         registry=r)
        self.generated_tokens = Counter("t5ort_generated_tokens", "tokens generated (rate() gives tokens/s)",
                                        registry=r)
        self.tokens_per_second = Histogram("t5ort_request_tokens_per_second", "tokens/s of each finished request",
                                           buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000), registry=r)

    def watch_encoder_cache(self, cache) -> None:
        """Expose an :class:`~t5ort.runtime.encoder_cache.EncoderCache`'s counts, read at each scrape."""
        self.registry.register(_EncoderCacheCollector(cache))


class _EncoderCacheCollector:
    """t5ort_encoder_cache_{hits,misses,evictions}_total and t5ort_encoder_cache_{bytes,entries}, from the cache."""

    def __init__(self, cache):
        self.cache = cache

    def collect(self):
        s = self.cache.stats()
        for name, value, what in (("hits", s.hits, "request sources found in the encoder cache"),
                                  ("misses", s.misses, "request sources encoded (not in the encoder cache)"),
                                  ("evictions", s.evictions, "sources dropped from the encoder cache for room")):
            yield CounterMetricFamily(f"t5ort_encoder_cache_{name}", what, value=value)
        yield GaugeMetricFamily("t5ort_encoder_cache_bytes", "bytes the encoder cache holds", value=s.bytes)
        yield GaugeMetricFamily("t5ort_encoder_cache_entries", "sources the encoder cache holds", value=s.entries)

    def describe(self):
        return []
