"""``t5ort`` on the command line: parse arguments, call the library, show the results."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np


class Progress:
    """Stage messages with elapsed time on stderr (the library itself never prints)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


# ---- output --------------------------------------------------------------------


def save_logits(path: Path, result) -> None:
    """Write sequences, raw logits and token log-probs to ``path`` (.npz) atomically."""
    if path.suffix != ".npz":
        raise SystemExit(f"--save-logits {path}: the file name must end in .npz")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, sequences=result.sequences, logits=result.logits, token_logprobs=result.token_logprobs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def result_json(runtime, result, top: int) -> dict:
    out = {
        "texts": list(result.texts) if result.texts is not None else None,
        "sequences": result.sequences.tolist(),
        "token_logprobs": result.token_logprobs.tolist(),
    }
    if top:
        ids, probs = result.top_alternatives(top)
        out["top_ids"] = ids.tolist()
        out["top_probs"] = probs.tolist()
    return out


# ---- commands ------------------------------------------------------------------


def cmd_export(args) -> int:
    import t5ort

    t5ort.export(
        args.model, args.out_dir, force=args.force, atol=args.atol, rel_tol=args.rel_tol,
        check_steps=args.check_steps, quantize=args.quantize, dtype={"fp32": "float32", "fp16": "float16"}[args.dtype],
        progress=Progress(args.quiet),
    )
    return 0


def decoding_options(args) -> dict:
    """The generation options given on the command line (only those set)."""
    options = {"max_new_tokens": args.max_new_tokens, "min_new_tokens": args.min_new_tokens}
    for name in ("num_beams", "num_return_sequences", "temperature", "top_k", "top_p", "seed",
                 "repetition_penalty", "no_repeat_ngram_size"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.do_sample:
        options["do_sample"] = True
    return options


def cmd_stream(runtime, args) -> int:
    """Print text as it comes: one row inline, several rows one line per step with each row's new text.

    Each step decodes the row's tokens so far and prints what the text gained, so pieces that only
    make sense together (a leading "▁", bytes of one character) print as the final text does.
    """
    rows = len(args.texts)
    new_ids = [[] for _ in range(rows)]
    shown = [""] * rows
    for event in runtime.stream(args.texts, **decoding_options(args)):
        if runtime.tokenizer is None:
            print(f"{event.step:>4}  " + "  ".join(str(int(t)) for t in event.token_ids), flush=True)
            continue
        for row, token in enumerate(event.token_ids):
            new_ids[row].append(int(token))
        texts = runtime.tokenizer.decode_batch(np.array(new_ids))
        gained = [t[len(old):] if t.startswith(old) else t for t, old in zip(texts, shown)]
        shown = texts
        if rows == 1:
            print(gained[0], end="", flush=True)
        else:
            print(f"{event.step:>4}  " + "  ".join(repr(g) for g in gained), flush=True)
    if rows == 1 and runtime.tokenizer is not None:
        print()
    return 0


def cmd_generate(args) -> int:
    from .demo import step_table

    runtime = load_runtime(args, args.out_dir)
    if args.stream:
        if args.top or args.save_logits or args.json:
            raise ValueError("--stream prints tokens as they come; it does not combine with --top, --json or --save-logits.")
        return cmd_stream(runtime, args)
    need_logits = bool(args.top or args.save_logits)
    speculation = speculation_options(args)
    if speculation:
        return cmd_generate_speculative(runtime, args, need_logits, speculation)
    result = runtime.generate(args.texts, output_logits=need_logits, **decoding_options(args))
    if args.save_logits:
        save_logits(Path(args.save_logits), result)
    if args.json:
        print(json.dumps(result_json(runtime, result, args.top), ensure_ascii=False))
        return 0
    for row, text in enumerate(result.texts):
        print(text if result.sequences_scores is None else f"{text}\t(score {result.sequences_scores[row]:.4f})")
        if args.top:
            print(step_table(runtime, result, row, args.top))
            print()
    return 0


def speculation_options(args) -> dict:
    """--prompt-lookup K [--max-matching-ngram-size N] or --assistant DIR [--num-assistant-tokens K]."""
    if args.prompt_lookup is not None and args.assistant is not None:
        raise ValueError("--prompt-lookup and --assistant are two kinds of speculative decoding; pick one.")
    if args.max_matching_ngram_size is not None and args.prompt_lookup is None:
        raise ValueError("--max-matching-ngram-size goes with --prompt-lookup K.")
    if args.num_assistant_tokens is not None and args.assistant is None:
        raise ValueError("--num-assistant-tokens goes with --assistant DIR.")
    if args.prompt_lookup is not None:
        options = {"prompt_lookup_num_tokens": args.prompt_lookup}
        if args.max_matching_ngram_size is not None:
            options["max_matching_ngram_size"] = args.max_matching_ngram_size
        return options
    if args.assistant is not None:
        options = {"assistant": load_runtime(args, args.assistant)}
        if args.num_assistant_tokens is not None:
            options["num_assistant_tokens"] = args.num_assistant_tokens
        return options
    return {}


def cmd_generate_speculative(runtime, args, need_logits: bool, speculation: dict) -> int:
    """Speculative greedy decoding, one generate per text (each printed as it ends, with what was drafted and
    kept on stderr)."""
    from .demo import step_table

    if args.stream:
        raise ValueError("--stream decodes one token per step; it does not combine with --prompt-lookup or --assistant.")
    if len(args.texts) > 1 and (args.json or args.save_logits):
        raise ValueError("--json and --save-logits with --prompt-lookup/--assistant take one text at a time.")
    for text in args.texts:
        result = runtime.generate([text], output_logits=need_logits, **decoding_options(args), **speculation)
        stats = result.speculation
        print(f"speculation: {stats.accepted} of {stats.drafted} drafted tokens kept; {stats.decoder_passes} "
              f"decoder passes for {result.num_steps} tokens", file=sys.stderr, flush=True)
        if args.save_logits:
            save_logits(Path(args.save_logits), result)
        if args.json:
            print(json.dumps(result_json(runtime, result, args.top), ensure_ascii=False))
            continue
        print(result.texts[0])
        if args.top:
            print(step_table(runtime, result, 0, args.top))
            print()
    return 0


def cmd_score(args) -> int:
    if len(args.source) != len(args.target):
        raise ValueError(f"{len(args.source)} --source but {len(args.target)} --target; pass them in pairs.")
    runtime = load_runtime(args, args.out_dir)
    result = runtime.score(args.source, args.target, output_logits=False)
    if args.json:
        print(json.dumps({"total_logprob": result.total_logprob.tolist(),
                          "token_logprobs": result.token_logprobs.tolist()}))
        return 0
    for source, target, total, ids, lps in zip(args.source, args.target, result.total_logprob,
                                               result.target_ids, result.token_logprobs):
        n = int((ids != -100).sum())
        print(f"{total:10.4f}  ({n} tokens, mean {total / n:.4f})  {source!r} -> {target!r}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.numbers, int8=args.int8, plot=Path(args.plot) if args.plot else None, top=args.top,
                    progress=Progress(args.quiet))


# ---- parser --------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    """The generation options `generate` and `batch` take, with transformers' names."""
    g = p.add_argument_group("decoding (transformers' names; unset = transformers' defaults)")
    g.add_argument("--max-new-tokens", type=positive_int, default=20)
    g.add_argument("--min-new-tokens", type=int, default=0)
    g.add_argument("--num-beams", type=positive_int)
    g.add_argument("--num-return-sequences", type=positive_int)
    g.add_argument("--do-sample", action="store_true")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--no-repeat-ngram-size", type=int)


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--spin", action=argparse.BooleanOptionalAction, default=True,
                   help="threads spin between ops and (decoder, up to 1 ms) between steps; --no-spin: they "
                        "always sleep, for cores that other work keeps busy (default: --spin)")


def load_runtime(args, directory, **limits):
    """``t5ort.load(directory)`` with the options of :func:`add_runtime_arguments` (and ``limits``)."""
    import t5ort

    return t5ort.load(directory, provider=args.provider, threads=args.threads, spin=args.spin, **limits)


# ---- t5ort batch -----------------------------------------------------------------


class BatchProgressBar:
    """A tqdm bar on stderr (rows, tokens/s, ETA), shown only on a terminal, fed by the job's progress events."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None

    def __call__(self, event) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=event.rows_total, initial=event.rows_done, unit="rows", desc="t5ort batch",
                            disable=None, dynamic_ncols=True)
        self.bar.set_postfix_str(f"{event.tokens_done / max(event.elapsed_s, 1e-9):.0f} tokens/s", refresh=False)
        self.bar.update(event.rows_done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_batch(args) -> int:
    from .corpus import JobSpec

    spec = JobSpec(task=args.task, text_column=args.text_column, target_column=args.target_column,
                   id_column=args.id_column, batch_size=args.batch_size, shard_rows=args.shard_rows,
                   top_n=args.top_n, save_raw_logits=args.save_raw_logits,
                   raw_logits_budget=int(args.raw_logits_budget_gb * 2**30), bucket=not args.no_bucket,
                   generation=decoding_options(args) if args.task == "generate" else {})
    if args.ray is not None:
        from .ray import run_ray_job

        if args.resume:
            raise ValueError("--resume is for one-machine jobs; a Ray job writes its OUTPUT at once at the end.")
        manifest = run_ray_job(args.out_dir, args.input, args.output, spec,
                               address=None if args.ray == "local" else args.ray,
                               workers=args.workers, threads=args.threads or 1)
    else:
        from .corpus import run_job

        runtime = load_runtime(args, args.out_dir)
        bar = BatchProgressBar(args.quiet)
        try:
            manifest = run_job(runtime, args.input, args.output, spec, resume=args.resume, progress=bar)
        finally:
            bar.close()
    counts, timings = manifest["counts"], manifest["timings"]
    resumed = f", {counts['rows_resumed']} resumed" if counts.get("rows_resumed") else ""
    print(f"{counts['rows']} rows in {counts['shards']} shards -> {args.output}{resumed}; "
          f"{counts['tokens_this_run']} tokens in {timings['seconds']:.1f} s "
          f"({timings['rows_per_s']} rows/s, {timings['tokens_per_s']} tokens/s); "
          f"manifest {Path(args.output) / '_manifest.json'}")
    return 0


def add_batch_parser(sub) -> None:
    p = sub.add_parser("batch", help="generate or score a whole corpus (JSONL/CSV/Parquet) into Parquet shards")
    p.add_argument("out_dir", help="an export written by `t5ort export` (on Ray: a path every node has)")
    p.add_argument("input", help="a .jsonl, .csv or .parquet file, or a folder of them")
    p.add_argument("output", help="folder of Parquet shards to write (with _manifest.json)")
    p.add_argument("--task", choices=["generate", "score"], default="generate")
    p.add_argument("--text-column", default="src", help="input text column (default src)")
    p.add_argument("--target-column", default="tgt", help="target text column for --task score (default tgt)")
    p.add_argument("--id-column", default="id", help="row id column (default id; absent: the row number)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="rows per model call (default 32)")
    p.add_argument("--shard-rows", type=positive_int, default=1024, help="rows per Parquet shard (default 1024)")
    p.add_argument("--top-n", type=int, default=5, help="top-n alternatives per step as list columns (0: none)")
    p.add_argument("--save-raw-logits", action="store_true", help="write every row's raw logits as .npy shards")
    p.add_argument("--raw-logits-budget-gb", type=float, default=4.0,
                   help="refuse --save-raw-logits before any work above this size (default 4 GiB)")
    p.add_argument("--no-bucket", action="store_true", help="batch rows in input order (to measure bucketing)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted job in OUTPUT")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray Data: a new local cluster, or ADDRESS (e.g. auto, ray://host:10001)")
    p.add_argument("--workers", type=positive_int, default=2, help="Ray actors, each with its own runtime (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_decoding_arguments(p)
    add_runtime_arguments(p)
    p.set_defaults(run=cmd_batch)


def add_serve_ray_arguments(p) -> None:
    g = p.add_argument_group("Ray Serve (the same app as replicas behind Ray Serve's HTTP proxy on --host:--port)")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="serve with Ray Serve: on a new local cluster, or on the cluster at ADDRESS")
    g.add_argument("--replicas", type=positive_int, default=None, help="fixed number of replicas (default 1)")
    g.add_argument("--min-replicas", type=int, default=None, help="autoscale from this many replicas")
    g.add_argument("--max-replicas", type=positive_int, default=None, help="autoscale up to this many replicas")
    g.add_argument("--target-ongoing-requests", type=float, default=4.0,
                   help="autoscaling target of requests in flight per replica (default 4)")


def cmd_serve_ray(args, config, progress) -> int:
    """`t5ort serve --ray`: replicas of the same app (their own runtime and batcher each) on Ray Serve."""
    from .ray import run_serve, serve_deployment

    autoscaling = None
    if args.min_replicas is not None or args.max_replicas is not None:
        if args.replicas is not None:
            raise ValueError("--replicas is a fixed count and --min-replicas/--max-replicas autoscale; pass one kind.")
        low = 1 if args.min_replicas is None else args.min_replicas
        autoscaling = {"min_replicas": low, "max_replicas": args.max_replicas or max(low, 1),
                       "target_ongoing_requests": args.target_ongoing_requests}
    load = {"provider": args.provider, "max_input_tokens": args.max_input_tokens, "max_new_tokens": args.max_new_tokens,
            "spin": args.spin}
    app = serve_deployment(args.out_dir, config, threads=args.threads or 1, load_options=load,
                           num_replicas=args.replicas or 1, autoscaling=autoscaling)
    scale = f"autoscaling {autoscaling}" if autoscaling else f"{args.replicas or 1} replica(s)"
    progress(f"serving {config.model_name!r} on http://{args.host}:{args.port} with Ray Serve, {scale}")
    return run_serve(app, host=args.host, port=args.port, address=None if args.ray == "local" else args.ray)


# ---- t5ort serve -----------------------------------------------------------------


def cmd_serve(args) -> int:
    """`t5ort serve`. With --json-output, start-up messages, warnings and errors are JSON log lines too."""
    import logging

    from .runtime.errors import T5ortError
    from .serve.server import configure_logging

    configure_logging(args.log_level, json_output=args.json_output)
    if not args.json_output:
        return serve(args, Progress(args.quiet),
                     lambda message: print(f"t5ort serve: warning: {message}", file=sys.stderr, flush=True))
    log = logging.getLogger("t5ort.serve")
    try:
        return serve(args, (lambda _message: None) if args.quiet else log.info, log.warning)
    except (T5ortError, ValueError, FileNotFoundError) as exc:
        log.error("t5ort serve: error: %s", exc)
        return 2


def serve_config(args):
    """The :class:`~t5ort.serve.ServeConfig` of `t5ort serve`'s flags."""
    from .serve import ServeConfig

    return ServeConfig(
        batching=args.batching, max_batch_rows=args.max_batch_rows, max_batch_tokens=args.max_batch_tokens,
        max_speculative_rows=args.max_speculative_rows,
        max_batch_size=args.max_batch_size, max_queue=args.max_queue, max_input_tokens=args.max_input_tokens,
        max_new_tokens=args.max_new_tokens, default_max_new_tokens=min(20, args.max_new_tokens),
        max_top_n_tokens=args.max_top_n_tokens, request_timeout=args.request_timeout,
        batch_window_ms=args.batch_window_ms, shutdown_grace=args.shutdown_grace, drain_delay=args.drain_delay,
        sse_keepalive=args.sse_keepalive, encoder_cache_mb=args.encoder_cache_mb,
        model_name=args.model_name or Path(args.out_dir).resolve().name,
    ).validate()


def serve(args, progress, warn) -> int:
    """Check the settings, then serve until SIGTERM; ``progress`` and ``warn`` take the messages."""
    import functools

    from .runtime.manifest import read_manifest
    from .serve import create_app
    from .serve.server import run, tls_options
    from .serve.tracing import otlp_tracer_provider

    config = serve_config(args)
    security = serve_security(args, os.environ)
    tls = tls_options(args.ssl_keyfile, args.ssl_certfile, args.ssl_ca_certs)
    if args.ray is not None:
        if (security.api_keys or security.metrics_api_keys or security.cors_allow_origins or tls
                or args.otlp_endpoint):
            raise ValueError("--api-key, --api-key-file, T5ORT_API_KEY, --metrics-api-key, --ssl-*, "
                             "--cors-allow-origin and --otlp-endpoint are not applied by --ray (Ray Serve's proxy answers the requests); "
                             "serve without --ray, or keep the Ray cluster's port on a private network.")
        return cmd_serve_ray(args, config, progress)
    if not security.api_keys and not tls.get("ssl_ca_certs") and not is_loopback(args.host):
        warn(f"--host {args.host} is reachable from other machines and no API key is set: anyone who can connect "
             "can use the model. Set --api-key-file FILE, T5ORT_API_KEY or --api-key (or require client "
             "certificates with --ssl-ca-certs).")
    read_manifest(args.out_dir)  # a wrong OUT_DIR fails here, before the port opens
    tracing = otlp_tracer_provider(args.otlp_endpoint, args.otlp_service_name) if args.otlp_endpoint else None
    # the model loads in the background once the port is open: /live answers, /ready says "loading"
    app = create_app(functools.partial(load_runtime, args, args.out_dir, max_input_tokens=args.max_input_tokens,
                                       max_new_tokens=args.max_new_tokens), config, security=security,
                     tracer=tracing.get_tracer("t5ort.serve") if tracing else None)
    progress("limits: " + ", ".join(f"{k}={v}" for k, v in config.as_dict().items()))
    if security.api_keys:
        progress(f"{len(security.api_keys)} API key(s): model routes need 'Authorization: Bearer <key>'")
    if tls.get("ssl_ca_certs"):
        progress(f"TLS: clients need a certificate signed by a CA in {tls['ssl_ca_certs']}")
    progress(f"serving {config.model_name!r} on {'https' if tls else 'http'}://{args.host}:{args.port} once "
             f"{args.out_dir} is loaded (probes: /live, /ready; docs: /docs; playground: /playground)")
    if tracing:
        progress(f"tracing: spans to {args.otlp_endpoint}/v1/traces as {args.otlp_service_name!r}")
    try:
        return run(app, host=args.host, port=args.port, shutdown_grace=config.shutdown_grace,
                   drain_delay=config.drain_delay, log_level=args.log_level, tls=tls)
    finally:
        if tracing:
            tracing.shutdown()  # sends the spans still batched


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is reachable from this machine only."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _api_key(key: str, where: str) -> str:
    key = key.strip()
    if not key or any(not ("\x21" <= c <= "\x7e") for c in key):
        # the key itself is not shown: it may be a real one with a typo
        raise ValueError(f"{where}: an API key must be non-empty visible ASCII without spaces; generate one with "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key


def read_api_key_file(path: str) -> list[str]:
    """One key per line; blank lines and lines starting with # are skipped. At least one key."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"--api-key-file {path}: cannot read it ({exc.strerror or exc}).") from exc
    keys = [_api_key(line, f"--api-key-file {path}, line {i}") for i, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ValueError(f"--api-key-file {path}: the file holds no key (one key per line; # starts a comment).")
    return keys


def serve_security(args, environ):
    """A :class:`~t5ort.serve.SecurityConfig`: API keys from --api-key, --api-key-file and T5ORT_API_KEY (all of
    them count) and the metrics keys."""
    from .serve.config import SecurityConfig

    keys = [_api_key(k, f"--api-key #{i}") for i, k in enumerate(args.api_key or [], 1)]
    if args.api_key_file:
        keys += read_api_key_file(args.api_key_file)
    if "T5ORT_API_KEY" in environ:
        keys.append(_api_key(environ["T5ORT_API_KEY"], "T5ORT_API_KEY (set, so it must hold a key)"))
    metrics_keys = [_api_key(k, f"--metrics-api-key #{i}") for i, k in enumerate(args.metrics_api_key or [], 1)]
    return SecurityConfig(api_keys=tuple(dict.fromkeys(keys)), metrics_api_keys=tuple(metrics_keys),
                          cors_allow_origins=tuple(args.cors_allow_origin or ())).validate()


def add_serve_parser(sub) -> None:
    from .serve.config import ServeConfig

    d = ServeConfig()
    p = sub.add_parser("serve", help="HTTP server: TGI- and OpenAI-compatible routes, /score, /metrics, /playground",
                       description="Serve an export over HTTP: TGI's /generate, /generate_stream and /, OpenAI's "
                                   "/v1/completions, /score, /logits; probes /live and /ready; /metrics; /playground.")
    p.add_argument("out_dir", help="an export written by `t5ort export`")

    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default loopback: 127.0.0.1; another address warns without --api-key)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--shutdown-grace", type=float, default=d.shutdown_grace,
                   help=f"seconds in-flight requests get after SIGTERM (default {d.shutdown_grace:g})")
    g.add_argument("--drain-delay", type=float, default=d.drain_delay, metavar="SECONDS",
                   help="after SIGTERM, answer /ready with 503 but keep serving for SECONDS before closing the "
                        "port, so that load balancers stop sending first (default 0; a second signal stops at once)")
    g.add_argument("--sse-keepalive", type=float, default=d.sse_keepalive, metavar="SECONDS",
                   help="a stream silent this long gets an SSE comment line, so proxies keep it open "
                        f"(default {d.sse_keepalive:g}, as TGI; 0: never)")

    g = p.add_argument_group("model and runtime")
    g.add_argument("--model-name", default=None, help="name for /v1/models (default: OUT_DIR's name)")
    add_runtime_arguments(g)

    g = p.add_argument_group("limits (per request and of the queue)")
    g.add_argument("--max-queue", type=positive_int, default=d.max_queue,
                   help=f"waiting requests; more are answered 429 (default {d.max_queue})")
    g.add_argument("--max-input-tokens", type=positive_int, default=d.max_input_tokens,
                   help=f"per request (default {d.max_input_tokens})")
    g.add_argument("--max-new-tokens", type=positive_int, default=d.max_new_tokens,
                   help=f"per request (default {d.max_new_tokens})")
    g.add_argument("--max-top-n-tokens", type=int, default=d.max_top_n_tokens,
                   help=f"cap on top_n_tokens / logprobs (default {d.max_top_n_tokens})")
    g.add_argument("--request-timeout", type=float, default=d.request_timeout,
                   help=f"seconds until a request is cancelled (default {d.request_timeout:g})")

    g = p.add_argument_group("batching")
    g.add_argument("--batching", choices=["inflight", "dynamic", "none"], default=d.batching,
                   help="inflight: requests join and leave the running batch at every step (default); dynamic: "
                        "compatible requests run as one batch until its longest ends; none: one at a time")
    g.add_argument("--max-batch-rows", type=positive_int, default=d.max_batch_rows,
                   help=f"in-flight: decoder rows in the running batch (default {d.max_batch_rows})")
    g.add_argument("--max-batch-tokens", type=positive_int, default=d.max_batch_tokens,
                   help=f"in-flight: cache budget, rows x the longest max_new_tokens (default {d.max_batch_tokens})")
    g.add_argument("--max-speculative-rows", type=int, default=d.max_speculative_rows, metavar="N",
                   help="in-flight: requests asking for prompt_lookup_num_tokens speculate only while at most N "
                        f"rows are in flight, theirs included; else plain greedy in the batch, the same tokens "
                        f"(default {d.max_speculative_rows}; 0: never)")
    g.add_argument("--max-batch-size", type=positive_int, default=d.max_batch_size,
                   help=f"dynamic: requests batched into one generate (default {d.max_batch_size})")
    g.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms,
                   help=f"wait for compatible requests this long once one waits (default {d.batch_window_ms:g})")
    g.add_argument("--encoder-cache-mb", type=float, default=None, metavar="MIB",
                   help="budget of the cache of recent sources' encoder outputs: a request whose input equals a "
                        "recent one's skips the encoder (default: 64 sources of 64 tokens, at most 256; 0: off)")

    g = p.add_argument_group("security (keys: prefer --api-key-file or T5ORT_API_KEY; --api-key shows in `ps`)")
    g.add_argument("--api-key", action="append", metavar="KEY",
                   help="model routes need 'Authorization: Bearer KEY' (repeat for several keys); probes, /metrics, "
                        "/docs and the /playground page stay open. Also from T5ORT_API_KEY and --api-key-file")
    g.add_argument("--api-key-file", metavar="FILE", help="API keys, one per line (# starts a comment)")
    g.add_argument("--metrics-api-key", action="append", metavar="KEY",
                   help="/metrics needs 'Authorization: Bearer KEY' (repeatable; default: /metrics is open)")
    g.add_argument("--ssl-keyfile", metavar="FILE", help="serve https: the private key (PEM), with --ssl-certfile")
    g.add_argument("--ssl-certfile", metavar="FILE", help="serve https: the certificate chain (PEM)")
    g.add_argument("--ssl-ca-certs", metavar="FILE",
                   help="mutual TLS: clients must present a certificate signed by one of these CAs (PEM)")
    g.add_argument("--cors-allow-origin", action="append", metavar="ORIGIN",
                   help="let pages from ORIGIN (https://host[:port], or *) call the server (repeatable; "
                        "default: no CORS headers, browsers allow same-origin calls only)")

    g = p.add_argument_group("logging (and tracing)")
    g.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="info: one access line per request (probes and /metrics at debug), start-up, shutdown")
    g.add_argument("--json-output", action="store_true",
                   help="log one JSON object per line: time, level, logger, message, request_id, method, path, "
                        "status, duration_ms (never headers or keys)")
    g.add_argument("--quiet", action="store_true", help="no start-up messages")
    g.add_argument("--otlp-endpoint", metavar="URL",
                   help="send a span per request to this OpenTelemetry collector (OTLP/HTTP, e.g. "
                        "http://127.0.0.1:4318), joined to the caller's traceparent; needs "
                        "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http")
    g.add_argument("--otlp-service-name", default="t5ort", metavar="NAME", help="service.name of the spans")
    add_serve_ray_arguments(p)
    p.set_defaults(run=cmd_serve)


# ---- t5ort check -----------------------------------------------------------------


def check_line(item) -> str:
    """One input and strategy of `t5ort check`: sequences, the three logit figures, the verdict."""
    figures = f"max |logit diff| vs fp32 {item.max_abs_diff_vs_fp32:.2e}"
    if item.max_abs_diff_vs_float64 is not None:
        figures += (f", vs float64 {item.max_abs_diff_vs_float64:.2e} (PyTorch fp32's own "
                    f"{item.fp32_max_abs_diff_vs_float64:.2e}, ratio {item.ratio:.3g})")
    if item.passed:
        verdict = "pass"
    else:
        why = [] if item.sequences_equal else ["sequences differ"]
        if item.logits_passed_by is None:
            bound = f"{item.tolerance:.2e}" + ("" if item.float64_bound is None else
                                               f" and float64 bound {item.float64_bound:.2e}")
            why.append(f"logits beyond the tolerance {bound}")
        verdict = "FAIL (" + "; ".join(why) + ")"
    equal = "yes" if item.sequences_equal else "NO"
    return f"  {item.strategy:<8} sequences equal: {equal:<3}  {figures}  {verdict}"


def cmd_check(args) -> int:
    from .export import check

    if args.texts and args.inputs:
        raise ValueError("pass input texts or --inputs FILE, not both.")
    texts = list(args.texts) or None
    if args.inputs:
        path = Path(args.inputs)
        if not path.is_file():
            raise FileNotFoundError(f"--inputs {path}: no such file; pass a text file with one input per line.")
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise ValueError(f"--inputs {path}: the file holds no input (one input per line, blank lines skipped).")
    result = check(args.out_dir, args.checkpoint, texts, num_beams=args.num_beams,
                   max_new_tokens=args.max_new_tokens, progress=Progress(args.quiet or args.json))
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0 if result.passed else 1
    shown = None
    for item in result.inputs:
        if item.index != shown:
            shown = item.index
            print(f"input {item.index + 1}: " + (repr(item.text) if item.text is not None else "(token ids)"))
        print(check_line(item))
    passed = sum(item.passed for item in result.inputs)
    rule = f"within {result.atol:g} + {result.rel_tol:g} x max|logit| of fp32"
    rule += (f", or within k = {result.k:g} x PyTorch fp32's own distance to float64" if result.float64_missing is None
             else f"; no float64 reference ({result.float64_missing})")
    print(f"{'PASS' if result.passed else 'FAIL'}: {passed} of {len(result.inputs)} checks passed ({rule})")
    return 0 if result.passed else 1


class IntermixedParser(argparse.ArgumentParser):
    """A subcommand parser whose positionals may follow its options (``check OUT --checkpoint DIR TEXT``):
    Python < 3.12's argparse gives a ``nargs="*"`` positional nothing once an option came between."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def add_check_parser(sub) -> None:
    default_class, sub._parser_class = sub._parser_class, IntermixedParser
    try:
        p = sub.add_parser("check", help="re-check an export against its PyTorch checkpoint on your own inputs")
    finally:
        sub._parser_class = default_class
    p.add_argument("out_dir", help="an export written by `t5ort export`")
    p.add_argument("texts", nargs="*", help="input texts (default: the export gate's two random check inputs)")
    p.add_argument("--checkpoint", required=True, help="the PyTorch checkpoint directory the export was made from")
    p.add_argument("--inputs", metavar="FILE", help="a text file with one input per line")
    p.add_argument("--num-beams", type=positive_int, default=1, help="also check beam search with B beams")
    p.add_argument("--max-new-tokens", type=positive_int, default=20)
    p.add_argument("--json", action="store_true", help="print one JSON object (exit code as without)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(run=cmd_check)


# ---- t5ort bench -----------------------------------------------------------------


def read_bench_inputs(path: Path) -> list:
    """--inputs FILE: one text per line, or .jsonl with {"text": ...} or {"input_ids": [...]} per line."""
    if not path.is_file():
        raise FileNotFoundError(f"--inputs {path}: no such file.")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            rows.append(line)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--inputs {path} line {number}: not JSON ({exc}).") from exc
        if not isinstance(obj, dict) or ("text" in obj) == ("input_ids" in obj):
            raise ValueError(f'--inputs {path} line {number}: expected an object with "text" or "input_ids".')
        rows.append(obj.get("text", obj.get("input_ids")))
    if not rows:
        raise ValueError(f"--inputs {path}: no inputs in the file.")
    if len({isinstance(r, str) for r in rows}) > 1:
        raise ValueError(f"--inputs {path}: mixes texts and input_ids; use one kind.")
    return rows


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def peer_python_arg(text: str) -> tuple[str, str]:
    """--peer-python PEER=PATH."""
    peer, sep, path = text.partition("=")
    if not sep or not peer.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected PEER=PATH, e.g. optimum=.venv-optimum/bin/python, got {text!r}")
    return peer.strip(), path.strip()


def cmd_bench(args) -> int:
    from . import bench

    peers = None
    if args.peers is not None:
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    peer_python = {}
    for peer, path in args.peer_python or ():
        if peer in peer_python:
            raise ValueError(f"--peer-python {peer}=... is given twice; give one interpreter per peer.")
        peer_python[peer] = path
    result = bench.run(args.out_dirs, checkpoint=args.checkpoint, peers=peers,
                       inputs=read_bench_inputs(Path(args.inputs)) if args.inputs else None,
                       batch_sizes=args.batch_sizes, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                       threads=args.threads, repeats=args.repeats, bare=args.bare, work_dir=args.work_dir,
                       peer_python=peer_python or None, progress=Progress(args.quiet))
    print(bench.format_table(result))
    if args.json:
        bench.write_json(result, args.json)
    if args.plot:
        bench.plot(result, args.plot)
    return 0


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="time exports (and with --checkpoint: PyTorch, Optimum, CTranslate2)")
    p.add_argument("out_dirs", nargs="+", metavar="OUT_DIR", help="exports of one model (t5ort export)")
    p.add_argument("--checkpoint", help="the PyTorch checkpoint directory, to time the peers on the same model")
    p.add_argument("--peers", help="comma-separated, with --checkpoint: pytorch, optimum, ctranslate2, "
                                   "ctranslate2-int8 (default pytorch,optimum,ctranslate2; those not installed are "
                                   "skipped)")
    p.add_argument("--inputs", metavar="FILE", help='one text per line, or .jsonl with {"text"} or {"input_ids"} '
                                                    "(default: seeded random ids, 32 per row)")
    p.add_argument("--batch-sizes", type=int_list, default=[1, 8, 32], help="default 1,8,32")
    p.add_argument("--num-beams", type=int_list, default=[1, 4], help="default 1,4")
    p.add_argument("--max-new-tokens", type=positive_int, default=64,
                   help="tokens decoded per row, EOS held off (default 64)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads of every system (default: physical cores)")
    p.add_argument("--repeats", type=positive_int, default=3, help="interleaved timed rounds (default 3)")
    p.add_argument("--bare", action="store_true", help="also time each export's decoder session alone")
    p.add_argument("--work-dir", help="where the peers' conversions are cached (default ~/.cache/t5ort/bench)")
    p.add_argument("--peer-python", action="append", type=peer_python_arg, metavar="PEER=PATH",
                   help="run PEER (its conversion and worker) under another environment's Python, e.g. "
                        "optimum=.venv-optimum/bin/python (repeatable; t5ort need not be installed there)")
    p.add_argument("--json", metavar="FILE", help="write every timing to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="write a chart of ms/step (matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(run=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t5ort", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a T5 checkpoint to ONNX and check it against PyTorch")
    p.add_argument("model", help="checkpoint directory (or hub id, where the hub is reachable)")
    p.add_argument("out_dir", help="directory to create")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance, absolute part (default 1e-4)")
    p.add_argument("--rel-tol", type=float, default=2e-6, help="parity tolerance per unit of max|logit| (2e-6)")
    p.add_argument("--check-steps", type=positive_int, default=8, help="decoding steps compared (default 8)")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="int8 weights (dynamic, one scale per tensor) or int4 weights (MatMulNBits, blocks of 128; "
                        "faster at batch 1, slower at batch 16); fidelity vs fp32 is measured and recorded")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32",
                   help="fp16: half-precision graphs for CUDA (overflow-prone nodes kept fp32), checked against "
                        "PyTorch fp32 within 2e-2 + 1e-2 x max|logit|")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("generate", help="generate (greedy, beam search or sampling) with per-step logits")
    p.add_argument("out_dir", help="an export written by `t5ort export`")
    p.add_argument("texts", nargs="+", help="input texts, one row each")
    p.add_argument("--top", type=positive_int, default=0, metavar="K", help="print a per-step table with the top-K tokens")
    p.add_argument("--save-logits", metavar="FILE.npz", help="write sequences, raw logits and token log-probs")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    add_decoding_arguments(p)
    g = p.add_argument_group("speculative greedy decoding (one text at a time; the result is plain greedy's)")
    g.add_argument("--prompt-lookup", type=positive_int, metavar="K",
                   help="draft up to K tokens by matching the output's last n-gram in the input")
    g.add_argument("--max-matching-ngram-size", type=positive_int, metavar="N", help="with --prompt-lookup (default 2)")
    g.add_argument("--assistant", metavar="DIR", help="a smaller export with the same vocabulary drafts greedily")
    g.add_argument("--num-assistant-tokens", type=positive_int, metavar="K", help="with --assistant (default 20)")
    add_runtime_arguments(p)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("score", help="teacher-forced log-probabilities of targets given sources")
    p.add_argument("out_dir", help="an export written by `t5ort export`")
    p.add_argument("--source", action="append", required=True, help="input text (repeat for several)")
    p.add_argument("--target", action="append", required=True, help="target text, one per --source")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_runtime_arguments(p)
    p.set_defaults(run=cmd_score)

    p = sub.add_parser("demo", help="the bundled English-to-German numbers model, step by step")
    p.add_argument("numbers", nargs="*", help='English number words, e.g. "three hundred forty-two"')
    p.add_argument("--int8", action="store_true", help="use the bundled int8 export")
    p.add_argument("--top", type=positive_int, default=3, metavar="K", help="alternatives per step (default 3)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the top-K probabilities of the first input (matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(run=cmd_demo)
    add_batch_parser(sub)
    add_serve_parser(sub)
    add_check_parser(sub)
    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .runtime.errors import T5ortError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (T5ortError, ValueError, FileNotFoundError) as exc:
        print(f"t5ort {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"t5ort {args.command}: error: this needs {exc.name!r}, which is not installed; "
              f"install the extra: pip install 't5ort[{extra}]'", file=sys.stderr)
        return 2


# Optional packages and the extra that installs each (pyproject.toml).
EXTRAS = {"torch": "export", "transformers": "export", "optimum": "export", "onnx": "export",
          "fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve", "pyarrow": "batch",
          "tqdm": "batch", "ray": "ray", "ctranslate2": "bench", "matplotlib": "demo"}


if __name__ == "__main__":
    sys.exit(main())
