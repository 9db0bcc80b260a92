"""Error bodies in each route's own schema: OpenAI's error object on /v1, TGI's ``{"error", "error_type"}`` elsewhere."""

from __future__ import annotations

from fastapi.responses import JSONResponse

# OpenAI's ``code`` for t5ort's error types that OpenAI names differently.
_OPENAI_CODES = {"unauthorized": "invalid_api_key"}


def is_openai_route(path: str) -> bool:
    return path.startswith("/v1/")


def error_response(status: int, message: str, error_type: str, path: str, field: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    """TGI's error body ``{"error", "error_type"}``, or OpenAI's ``{"error": {message, type, param, code}}`` on /v1."""
    if is_openai_route(path):
        status = 400 if status == 422 else status  # OpenAI answers invalid requests with 400
        kind = {429: "rate_limit_exceeded", 404: "not_found_error", 413: "invalid_request_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error")
        body: dict = {"error": {"message": message, "type": kind, "param": field,
                                "code": _OPENAI_CODES.get(error_type, error_type)}}
    else:
        body = {"error": message, "error_type": error_type}
        if field:
            body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)
