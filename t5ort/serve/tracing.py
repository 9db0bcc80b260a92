"""OpenTelemetry traces over OTLP/HTTP: one server span per request, joined to the caller's W3C trace context.

Optional: needs ``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-http`` (not in ``[serve]``).
Spans carry the method, path, route, status, request id and the time to the first body chunk (for a
stream, the first token); never headers, bodies or keys.
"""

from __future__ import annotations

import time

OTLP_PACKAGES = "opentelemetry-sdk opentelemetry-exporter-otlp-proto-http"


def otlp_tracer_provider(endpoint: str, service_name: str = "t5ort"):
    """A TracerProvider that batches spans to ``endpoint`` (an OTLP/HTTP collector, e.g. http://host:4318).

    It is not made the global provider. Call its ``shutdown()`` at exit to send what is left.
    """
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"--otlp-endpoint {endpoint!r}: give the collector's OTLP/HTTP base URL, e.g. "
                         "http://127.0.0.1:4318 (spans go to /v1/traces under it).")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ValueError(f"--otlp-endpoint needs OpenTelemetry's SDK and OTLP exporter: pip install {OTLP_PACKAGES}"
                         ) from exc
    from .. import __version__

    provider = TracerProvider(resource=Resource.create({"service.name": service_name,
                                                        "service.version": __version__}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")))
    return provider


class Tracing:
    """ASGI middleware: a SERVER span per HTTP request, child of the request's ``traceparent`` if it has one."""

    def __init__(self, app, tracer):
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.app = app
        self.tracer = tracer
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for name, value in scope.get("headers") or []:
            if name in (b"traceparent", b"tracestate"):
                headers[name.decode()] = value.decode("latin-1")
        parent = self._propagator.extract(headers)
        method, path = scope.get("method", "GET"), scope.get("path", "/")
        started = time.perf_counter()
        with self.tracer.start_as_current_span(f"{method} {path}", context=parent, kind=self._trace.SpanKind.SERVER,
                                               record_exception=False) as span:
            span.set_attribute("http.request.method", method)
            span.set_attribute("url.path", path)
            request_id = scope.get("state", {}).get("request_id")
            if request_id:
                span.set_attribute("t5ort.request_id", request_id)
            first_byte = False

            async def send_traced(message):
                nonlocal first_byte
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
                elif message["type"] == "http.response.body" and not first_byte and message.get("body"):
                    first_byte = True
                    span.set_attribute("t5ort.time_to_first_byte_ms",
                                       round((time.perf_counter() - started) * 1000, 3))
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")
