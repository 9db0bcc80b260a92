"""Requests in, fully checked jobs out: every limit and option is checked here, before anything is queued.

Errors are :class:`RequestError` naming the field (``parameters.top_n_tokens``), the problem and
the fix; the HTTP layer turns them into a 4xx with a JSON body.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np

from ..runtime.options import GenerationOptions
from .config import ServeConfig
from .schemas import CompletionRequest, GenerateRequest, ScoreRequest
from .scheduler import GenerateJob, ScoreJob


class RequestError(Exception):
    """A request the server will not run: ``status`` (4xx), the ``field`` at fault and a message."""

    def __init__(self, field: str | None, message: str, status: int = 422, error_type: str = "validation"):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.status = status
        self.error_type = error_type


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class TgiPlan:
    """A TGI request's job plus what the answer needs to echo back."""

    job: GenerateJob
    inputs: str
    details: bool
    decoder_input_details: bool
    return_full_text: bool
    seed: int | None


@dataclass(frozen=True)
class CompletionPlan:
    jobs: tuple[GenerateJob, ...]
    n: int
    logprobs: int | None
    include_usage: bool


def _tokens(runtime, text: str, field: str) -> np.ndarray:
    try:
        ids, _ = runtime.encode_texts([text])
    except (ValueError, TypeError) as exc:
        raise RequestError(field, str(exc)) from exc
    return ids[0]


def _input_ids(runtime, config: ServeConfig, text: str, field: str, truncate: int | None = None) -> np.ndarray:
    ids = _tokens(runtime, text, field)
    if truncate is not None and len(ids) > truncate:
        ids = ids[-truncate:]
    if len(ids) > config.max_input_tokens:
        raise RequestError(field, f"has {len(ids)} tokens, over this server's max_input_tokens="
                           f"{config.max_input_tokens}; shorten it (or pass parameters.truncate).")
    return ids


def _max_new_tokens(config: ServeConfig, value: int | None, field: str) -> int:
    value = config.default_max_new_tokens if value is None else value
    if value > config.max_new_tokens:
        raise RequestError(field, f"must be <= {config.max_new_tokens} (this server's max_new_tokens), got {value}.")
    return value


def _top_n(config: ServeConfig, value: int | None, field: str) -> int:
    value = value or 0
    if value > config.max_top_n_tokens:
        raise RequestError(field, f"must be <= {config.max_top_n_tokens} (this server's max_top_n_tokens), "
                           f"got {value}.")
    return value


def _options(runtime, config: ServeConfig, options: dict, max_new_tokens: int, field: str) -> tuple:
    """Check ``options`` with the runtime's own rules; return them as a sorted tuple (a batch key)."""
    for name in ("num_beams", "num_return_sequences"):
        if options.get(name, 1) > config.max_return_sequences:
            raise RequestError(f"{field}.{name}", f"must be <= {config.max_return_sequences} "
                               f"(this server's max_return_sequences), got {options[name]}.")
    try:
        GenerationOptions.create(max_new_tokens=max_new_tokens, **options).validate(runtime.vocab_size)
    except (ValueError, TypeError) as exc:
        raise RequestError(field, str(exc)) from exc
    if "prompt_lookup_num_tokens" in options and getattr(config, "batching", "inflight") != "inflight":
        raise RequestError(f"{field}.prompt_lookup_num_tokens", "speculative decoding runs beside the in-flight "
                           f"batch; this server batches {config.batching!r} (start it with --batching inflight).")
    return tuple(sorted(options.items()))


def _logits_budget(runtime, config: ServeConfig, rows: int, max_new_tokens: int) -> None:
    need = rows * max_new_tokens * runtime.vocab_size * 4
    if need > config.max_logits_bytes:
        raise RequestError(
            "parameters.max_new_tokens",
            f"the raw logits of {rows} row(s) x {max_new_tokens} steps x {runtime.vocab_size} tokens would take "
            f"{need / 2**20:.1f} MiB, over this server's max_logits_bytes={config.max_logits_bytes / 2**20:.1f} MiB; "
            "ask for fewer new tokens.", status=413)


def _refuse(field: str, value, ok: bool, what: str) -> None:
    if not ok:
        raise RequestError(field, f"{what} is not supported by t5ort serve, got {value!r}; drop it.")


def tgi_plan(runtime, config: ServeConfig, request: GenerateRequest, request_id: str, *, stream: bool,
             want_logits: bool = False) -> TgiPlan:
    p = request.parameters
    f = "parameters"
    _refuse(f"{f}.best_of", p.best_of, p.best_of in (None, 1), "best_of > 1")
    _refuse(f"{f}.watermark", p.watermark, not p.watermark, "watermark")
    _refuse(f"{f}.grammar", p.grammar, p.grammar is None, "grammar")
    _refuse(f"{f}.adapter_id", p.adapter_id, p.adapter_id is None, "adapter_id")
    _refuse(f"{f}.frequency_penalty", p.frequency_penalty, not p.frequency_penalty, "frequency_penalty")
    max_new = _max_new_tokens(config, p.max_new_tokens, f"{f}.max_new_tokens")
    top_n = _top_n(config, p.top_n_tokens, f"{f}.top_n_tokens")
    sampling = p.do_sample or any(v is not None for v in (p.temperature, p.top_k, p.top_p, p.typical_p))
    options: dict = {}
    if sampling:  # as TGI: any warper implies sampling; no top-k unless asked
        options.update(do_sample=True, top_k=p.top_k or 0)
        for name in ("temperature", "top_p", "typical_p", "seed"):
            if getattr(p, name) is not None:
                options[name] = getattr(p, name)
    for name in ("repetition_penalty", "num_beams", "num_return_sequences", "min_new_tokens", "no_repeat_ngram_size",
                 "length_penalty", "early_stopping", "min_p", "forced_bos_token_id", "forced_eos_token_id",
                 "prompt_lookup_num_tokens"):
        if getattr(p, name) is not None:
            options[name] = getattr(p, name)
    if p.bad_words_ids is not None:
        options["bad_words_ids"] = tuple(tuple(w) for w in p.bad_words_ids)
    if p.suppress_tokens is not None:
        options["suppress_tokens"] = tuple(p.suppress_tokens)
    if p.stop:
        if not all(p.stop):
            raise RequestError(f"{f}.stop", "stop strings must not be empty.")
        options["stop_strings"] = tuple(p.stop)
    if stream and options.get("num_beams", 1) > 1:
        raise RequestError(f"{f}.num_beams", "beam search cannot stream; use /generate.")
    if stream and options.get("num_return_sequences", 1) > 1:
        raise RequestError(f"{f}.num_return_sequences", "streaming carries one sequence; use /generate.")
    key = _options(runtime, config, options, max_new, f)
    ids = _input_ids(runtime, config, request.inputs, "inputs", p.truncate)
    rows = options.get("num_return_sequences", 1)
    if want_logits:
        _logits_budget(runtime, config, max(rows, options.get("num_beams", 1)), max_new)
    now = time.monotonic()
    job = GenerateJob(request_id, ids, key, max_new, top_n, want_logits, now + config.request_timeout, now,
                      entropy=p.entropy, stream=stream)
    return TgiPlan(job, request.inputs, p.details, p.decoder_input_details, bool(p.return_full_text),
                   options.get("seed"))


def completion_plan(runtime, config: ServeConfig, request: CompletionRequest, request_id: str) -> CompletionPlan:
    r = request
    if r.model != config.model_name:
        raise RequestError("model", f"model {r.model!r} is not served here; this server serves "
                           f"{config.model_name!r} (see /v1/models).", status=404, error_type="not_found")
    _refuse("echo", r.echo, not r.echo, "echo (an encoder-decoder does not continue its prompt)")
    _refuse("suffix", r.suffix, r.suffix is None, "suffix")
    _refuse("presence_penalty", r.presence_penalty, not r.presence_penalty, "presence_penalty")
    _refuse("frequency_penalty", r.frequency_penalty, not r.frequency_penalty, "frequency_penalty")
    _refuse("logit_bias", r.logit_bias, not r.logit_bias, "logit_bias")
    _refuse("best_of", r.best_of, r.best_of in (None, r.n), "best_of other than n")
    max_new = _max_new_tokens(config, 16 if r.max_tokens is None else r.max_tokens, "max_tokens")
    logprobs = r.logprobs
    if logprobs is not None:
        _top_n(config, logprobs, "logprobs")
    temperature = 1.0 if r.temperature is None else r.temperature
    options: dict = {}
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature, top_k=r.top_k or 0)
        if r.top_p is not None:
            options["top_p"] = r.top_p
        if r.seed is not None:
            options["seed"] = r.seed
        if r.n > 1:
            options["num_return_sequences"] = r.n
    else:
        if r.n > 1:
            raise RequestError("n", "n > 1 needs temperature > 0: greedy decoding (temperature 0) has one answer.")
        if r.top_p not in (None, 1.0) or r.top_k:
            raise RequestError("top_p" if r.top_p not in (None, 1.0) else "top_k",
                               "applies only when sampling (temperature > 0).")
    if r.min_tokens is not None:
        options["min_new_tokens"] = r.min_tokens
    if r.repetition_penalty is not None:
        options["repetition_penalty"] = r.repetition_penalty
    if r.prompt_lookup_num_tokens is not None:
        options["prompt_lookup_num_tokens"] = r.prompt_lookup_num_tokens
    stops = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
    if len(stops) > 4 or not all(stops):
        raise RequestError("stop", "pass at most 4 non-empty stop strings.")
    if stops:
        options["stop_strings"] = tuple(stops)
    key = _options(runtime, config, options, max_new, "request")
    prompts = _prompts(runtime, config, r.prompt)
    now = time.monotonic()
    jobs = tuple(
        GenerateJob(f"{request_id}-{i}" if len(prompts) > 1 else request_id, ids, key, max_new, logprobs or 0,
                    False, now + config.request_timeout, now, stream=bool(r.stream))
        for i, ids in enumerate(prompts)
    )
    include_usage = bool(r.stream_options and r.stream_options.include_usage)
    return CompletionPlan(jobs, r.n, logprobs, include_usage)


def _prompts(runtime, config: ServeConfig, prompt) -> list[np.ndarray]:
    if isinstance(prompt, str):
        return [_input_ids(runtime, config, prompt, "prompt")]
    if not prompt:
        raise RequestError("prompt", "is empty: pass a string, a list of strings or token ids.")
    if len(prompt) > config.max_batch_size:
        raise RequestError("prompt", f"holds {len(prompt)} prompts, over this server's max_batch_size="
                           f"{config.max_batch_size}; send fewer per request.")
    if isinstance(prompt[0], str):
        return [_input_ids(runtime, config, p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    rows = [prompt] if isinstance(prompt[0], int) else prompt
    out = []
    for i, row in enumerate(rows):
        field = "prompt" if rows is not prompt else f"prompt[{i}]"
        if not row:
            raise RequestError(field, "is an empty list of token ids.")
        if max(row) >= runtime.vocab_size:
            raise RequestError(field, f"token ids must lie in [0, {runtime.vocab_size}), got {max(row)}.")
        if len(row) > config.max_input_tokens:
            raise RequestError(field, f"has {len(row)} tokens, over this server's max_input_tokens="
                               f"{config.max_input_tokens}.")
        out.append(np.asarray(row, dtype=np.int64))
    return out


def score_job(runtime, config: ServeConfig, request: ScoreRequest, request_id: str) -> ScoreJob:
    sources, targets = [], []
    paired = request.pairs is not None
    for i, pair in enumerate(request.as_pairs()):
        source_field, target_field = (f"pairs[{i}].source", f"pairs[{i}].target") if paired else ("inputs",
                                                                                                  f"targets[{i}]")
        sources.append(_input_ids(runtime, config, pair.source, source_field))
        target = _tokens(runtime, pair.target, target_field)
        if len(target) > config.max_new_tokens:
            raise RequestError(target_field, f"has {len(target)} tokens, over this server's max_new_tokens="
                               f"{config.max_new_tokens}.")
        targets.append(target)
    now = time.monotonic()
    return ScoreJob(request_id, tuple(sources), tuple(targets), now + config.request_timeout, now)
