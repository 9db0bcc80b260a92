"""``t5ort.bench.run``: every system in its own process, repetitions interleaved, medians and spreads."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..runtime.manifest import read_manifest
from ..runtime.tokenizer import load_tokenizer
from . import systems as sy
from .machine import OtherCPU, machine, physical_cores
from .results import BenchResult, Measurement, SystemInfo, Workload

PEER_LABELS = {"pytorch": "PyTorch", "optimum": "Optimum", "ctranslate2": "CT2 fp32", "ctranslate2-int8": "CT2 int8"}
PEER_PRECISIONS = {"pytorch": "fp32", "optimum": "fp32", "ctranslate2": "fp32", "ctranslate2-int8": "int8"}
FLOOR_LABELS = {"floor": "floor fp32", "floor-int8": "floor int8"}
DEFAULT_PEERS = ("pytorch", "optimum", "ctranslate2")
PAUSE_S = 0.2  # before each timed call: idle threads of the previous system's libraries settle
INPUT_LENGTH = 32  # tokens per row of the default (seeded random) inputs


def _positive_ints(name: str, values) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {values!r}.")
    return values


def _positive(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def _precision(manifest) -> str:
    weights = manifest.quantization.get("weights") if manifest.quantization else None
    return weights or {"float32": "fp32", "float16": "fp16"}.get(manifest.dtype, manifest.dtype)


def _label(manifest) -> str:
    return f"t5ort {_precision(manifest)}"


def _exports(out_dirs: Sequence) -> list[tuple[str, Path, object]]:
    """(label, directory, manifest) per export; labels made unique with the directory name."""
    if isinstance(out_dirs, (str, Path)) or not out_dirs:
        raise ValueError("out_dirs must be a non-empty list of export directories (t5ort export OUT_DIR).")
    found = [(Path(d), read_manifest(Path(d))) for d in out_dirs]  # ArtifactError names a bad directory
    labels = [_label(m) for _, m in found]
    out = []
    for (d, m), label in zip(found, labels):
        out.append((f"{label} ({d.name})" if labels.count(label) > 1 else label, d, m))
    sizes = {m.geometry.vocab_size for _, _, m in out}
    if len(sizes) > 1:
        raise ValueError(f"the exports have different vocabularies ({sorted(sizes)}): bench compares one model's "
                         "exports; run it once per model.")
    return out


def _input_pool(inputs, rows: int, directory: Path, manifest, length: int) -> list[list[int]]:
    """``rows`` rows of token ids: the inputs (texts tokenized with the first export's tokenizer, or id lists),
    repeated where there are fewer than ``rows``; default: seeded random ids, ``length`` per row."""
    vocab = manifest.geometry.vocab_size
    if inputs is None:
        rng = np.random.default_rng(0)
        return [list(rng.integers(3, min(vocab, 32000), size=length)) for _ in range(rows)]
    if isinstance(inputs, str):
        raise TypeError("inputs must be a list of texts or of token-id lists, not a single string.")
    inputs = list(inputs)
    if not inputs:
        raise ValueError("inputs is empty: pass at least one text (or token-id list), or None for random inputs.")
    if all(isinstance(t, str) for t in inputs):
        tokenizer = load_tokenizer(directory, manifest)
        if tokenizer is None:
            raise ValueError(f"{directory} has no tokenizer: pass inputs as token-id lists instead of texts.")
        ids = tokenizer.encode_batch(inputs)
    else:
        ids = []
        for i, row in enumerate(inputs):
            row = list(row)
            if not row or not all(isinstance(t, (int, np.integer)) and 0 <= t < vocab for t in row):
                raise ValueError(f"inputs[{i}] must be a non-empty text or list of token ids in [0, {vocab}).")
            ids.append([int(t) for t in row])
    for i, row in enumerate(ids):
        if not row:
            raise ValueError(f"inputs[{i}] tokenizes to no tokens.")
    return [ids[i % len(ids)] for i in range(rows)]


def _batch(pool: list[list[int]], batch: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``batch`` rows, right-padded: int64 input_ids and attention_mask [batch, longest]."""
    rows = pool[:batch]
    width = max(len(r) for r in rows)
    ids = np.full((batch, width), pad, dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


def _child_command(*args: str, python: str | None = None):
    """``sy.child_command``, given ``python=`` only when set (benchmarks/old_vs_new.py patches in one without)."""
    return sy.child_command(*args, python=python) if python else sy.child_command(*args)


class _Worker:
    """One system in its own process (``python -m t5ort.bench._child worker ...``), requests pickled over pipes."""

    def __init__(self, label: str, kind: str, directory: Path, threads: int, python: str | None = None):
        from multiprocessing.connection import Connection

        self.label, self.kind, self.directory = label, kind, directory
        command, env = _child_command("worker", kind, str(directory), str(threads), python=python)
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._send = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self._recv = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        status, self.info = self._receive()
        if status != "ok":
            self.process.wait(10)
            raise RuntimeError(self.info)

    def _receive(self):
        try:
            return self._recv.recv()
        except EOFError:
            return "error", f"the worker process exited (code {self.process.wait(10)}); its error is on stderr"

    def call(self, request: sy.Request) -> dict:
        self._send.send(request)
        status, out = self._receive()
        if status != "ok":
            raise RuntimeError(f"{self.label} failed:\n{out}")
        return out

    def stop(self) -> dict:
        self._send.send(None)
        _status, out = self._receive()
        self.process.wait(30)
        self.close()
        return out

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._send.close()
        self._recv.close()


def _prepare_peers(peers, checkpoint: Path, work_dir: Path, say, pythons: dict[str, dict]) -> dict[str, str]:
    """Make the peers' missing artifacts, each in a throwaway process (under the peer's own interpreter where
    ``pythons`` has one); {peer: why skipped} for failures."""
    skipped = {}
    for peer in peers:
        if sy.artifact_ready(peer, checkpoint, work_dir):
            continue
        probe = pythons.get(peer)
        missing = probe["missing_prepare"] if probe else sy.missing_modules(peer, prepare=True)
        if missing:
            skipped[peer] = f"making its artifact needs {', '.join(missing)} (not installed{_in(probe)})"
            continue
        say(f"{PEER_LABELS[peer]}: converting {checkpoint} into {sy.artifact_dir(peer, checkpoint, work_dir)}"
            + (f" with {probe['python']}" if probe else ""))
        command, env = _child_command("prepare", peer, str(checkpoint), str(work_dir),
                                      python=probe["python"] if probe else None)
        code = subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode
        if code != 0 or not sy.artifact_ready(peer, checkpoint, work_dir):
            skipped[peer] = f"making its artifact failed (exit code {code}; its error is on stderr)"
    return skipped


def _prepare_floors(manifest, work_dir: Path, say) -> tuple[list[tuple[str, str, Path]], dict[str, str]]:
    """The floor graphs of the exports' step shape, made in a throwaway process where missing:
    ([(label, kind, directory)], {label: why skipped})."""
    from dataclasses import asdict

    from . import floor

    shape = floor.StepShape.of(manifest.geometry)
    dirs = {"floor": floor.graph_dir(shape, work_dir, "fp32"), "floor-int8": floor.graph_dir(shape, work_dir, "int8")}
    entries = [(FLOOR_LABELS[k], k, d) for k, d in dirs.items()]
    if all(floor.ready(shape, work_dir, p) for p in floor.PRECISIONS):
        return entries, {}
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        return [], {label: "making its graph needs onnx (not installed; pip install 't5ort[export]')"
                    for label in FLOOR_LABELS.values()}
    say(f"floors: making the MatMul graphs of a step ({shape.parameters / 1e6:.0f}M weights) in "
        f"{dirs['floor'].parent}")
    command, env = _child_command("floor", json.dumps(asdict(shape)), str(work_dir))
    code = subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode
    if code != 0 or not all(floor.ready(shape, work_dir, p) for p in floor.PRECISIONS):
        return [], {label: f"making its graph failed (exit code {code}; its error is on stderr)"
                    for label in FLOOR_LABELS.values()}
    return entries, {}


def _in(probe: dict | None) -> str:
    return f" in {probe['python']}" if probe else ""


def _peer_pythons(peer_python, peers: tuple[str, ...], checkpoint) -> dict[str, dict]:
    """{peer: sy.probe_python(...)} for ``peer_python``; ValueError for unknown or idle peers and bad paths."""
    if not peer_python:
        return {}
    if not isinstance(peer_python, Mapping):
        raise ValueError("peer_python must map peer names to Python interpreters, e.g. {'optimum': "
                         f"'.venv-optimum/bin/python'}} (--peer-python optimum=PATH), got {peer_python!r}.")
    for p in peer_python:
        if p not in sy.PEERS:
            raise ValueError(f"peer_python names an unknown peer {p!r} (--peer-python {p}=PATH); use any of "
                             f"{', '.join(sy.PEERS)}.")
    if checkpoint is None:
        raise ValueError("peer_python (--peer-python) needs checkpoint= (--checkpoint): the peers run on the PyTorch "
                         "checkpoint the exports were made from.")
    for p in peer_python:
        if p not in peers:
            raise ValueError(f"peer_python names {p!r} (--peer-python {p}=PATH), which is not among the peers run "
                             f"({', '.join(peers) or 'none'}): add it to peers (--peers) or leave it out.")
    return {p: sy.probe_python(path, p) for p, path in peer_python.items()}


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("numpy", "torch", "transformers", "optimum", "optimum-onnx", "ctranslate2"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _size_mb(kind: str, directory: Path) -> float:
    return sum(p.stat().st_size for p in sy.artifact_files(kind, directory)) / 1e6


def run(
    out_dirs: Sequence[str | Path],
    *,
    checkpoint: str | Path | None = None,
    peers: Sequence[str] | None = None,
    inputs: Sequence[str] | Sequence[Sequence[int]] | None = None,
    batch_sizes: Sequence[int] = (1, 8, 32),
    num_beams: Sequence[int] = (1, 4),
    max_new_tokens: int = 64,
    threads: int | None = None,
    repeats: int = 3,
    bare: bool = False,
    workloads: Sequence[tuple[int, int]] | None = None,
    work_dir: str | Path | None = None,
    peer_python: Mapping[str, str | os.PathLike] | None = None,
    floors: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Time generation on one model's exports ``out_dirs`` and, with ``checkpoint``, on its ``peers``.

    Every system runs in its own process (no system's threads disturb another's) with ``threads``
    threads (default: the physical cores) and returns the raw logits of every step. Each workload
    (every batch size x beam count) decodes exactly ``max_new_tokens`` tokens per row (EOS held
    off), on ``inputs`` (texts, tokenized with the first export's tokenizer, or token-id lists;
    repeated to fill the batch; default: seeded random ids, 32 per row). After one warm-up call
    each, ``repeats`` rounds run every system once, in a rotating order, 0.2 s apart; each timed
    call is followed by a one-token call (time to first token).

    - ``peers``: any of ``pytorch``, ``optimum``, ``ctranslate2``, ``ctranslate2-int8`` (default
      the first three), with ``checkpoint`` only; those not installed are skipped (``skipped``
      says why). Optimum's export and CTranslate2's conversions are made once, in
      ``work_dir`` (default ``~/.cache/t5ort/bench``), and reused while the checkpoint is unchanged.
    - ``peer_python``: {peer: Python interpreter} to run a peer in an environment of its own, e.g.
      ``{"optimum": ".venv-optimum/bin/python"}`` (optimum-onnx pins transformers<4.58). That peer's
      conversion and worker run under it, importing t5ort from this checkout (on their PYTHONPATH;
      it need not be installed there), and the modules it lacks are asked of it. Each system's
      interpreter and package versions are in ``systems``.
    - ``workloads``: (batch, num_beams) pairs to run instead of every ``batch_sizes`` x ``num_beams``.
    - ``bare``: also time each export's decoder session alone (encode, then one step after
      another on a fixed token: no search, no processors, nothing kept): generate / bare is
      the decoding loop's overhead.
    - ``floors``: also time the floor of a step, fp32 and int8 (:mod:`t5ort.bench.floor`: a
      MatMul graph over the weights a decoder step reads, of the first export's shape, made once
      in ``work_dir``; needs onnx) as two more systems, at each workload's rows (batch x beams).

    Each timed call of ``max_new_tokens`` is followed by a call of one token on the same inputs
    (encoder and one step), in the same rounds: each :class:`Measurement` splits its time into
    decode ms/step, (t_N - t_1) / (N - 1), and encoder ms, t_1 less one step (for the peers that
    project the encoder output into each layer's cross-attention keys and values at the first step,
    that projection counts as encoder time too, as it does in t5ort's encoder graph).

    Returns a :class:`BenchResult`: per system and workload the raw seconds of every call, medians,
    spreads, tokens/s, time to first token and the share of tokens equal to the first export's;
    per system its artifact size and its process's peak RSS; the CPU time other processes took.
    ``progress`` receives a short message at each stage.
    """
    say = progress or (lambda message: None)
    exports = _exports(out_dirs)
    if workloads is not None:
        pairs = [tuple(p) for p in workloads]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError(f"workloads must be a non-empty list of (batch, num_beams) pairs, got {workloads!r}.")
        batch_sizes = _positive_ints("workloads' batch sizes", [b for b, _ in pairs])
        num_beams = _positive_ints("workloads' num_beams", [k for _, k in pairs])
    else:
        batch_sizes = _positive_ints("batch_sizes", batch_sizes)
        num_beams = _positive_ints("num_beams", num_beams)
        pairs = list(itertools.product(batch_sizes, num_beams))
    max_new_tokens = _positive("max_new_tokens", max_new_tokens)
    repeats = _positive("repeats", repeats)
    threads = _positive("threads", threads, allow_none=True) or physical_cores()
    if peers is None:
        peers = DEFAULT_PEERS if checkpoint is not None else ()
    peers = tuple(peers)
    for p in peers:
        if p not in sy.PEERS:
            raise ValueError(f"unknown peer {p!r}; use any of {', '.join(sy.PEERS)}.")
    if peers and checkpoint is None:
        raise ValueError(f"peers={list(peers)} need checkpoint=: the PyTorch checkpoint the exports were made from.")
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not (checkpoint / "config.json").is_file():
            raise ValueError(f"checkpoint={str(checkpoint)!r} is not a checkpoint directory (no config.json).")
    pythons = _peer_pythons(peer_python, peers, checkpoint)
    work_dir = Path(work_dir) if work_dir is not None else Path.home() / ".cache" / "t5ort" / "bench"
    _, first_dir, first_manifest = exports[0]
    pool = _input_pool(inputs, max(batch_sizes), first_dir, first_manifest, INPUT_LENGTH)
    pad = first_manifest.special_tokens.pad_token_id

    skipped: dict[str, str] = {}
    entries = [(label, "t5ort", d) for label, d, _ in exports]
    if bare:
        entries += [(f"{label} bare decoder", "t5ort-bare", d) for label, d, _ in exports]
    if peers:
        work_dir.mkdir(parents=True, exist_ok=True)
        missing = {p: f"{', '.join(m)} not installed{_in(pythons.get(p))}" for p in peers
                   if (m := pythons[p]["missing"] if p in pythons else sy.missing_modules(p))}
        skipped |= {PEER_LABELS[p]: why for p, why in missing.items()}
        ready = [p for p in peers if p not in missing]
        failed = _prepare_peers(ready, checkpoint, work_dir, say, pythons)
        skipped |= {PEER_LABELS[p]: why for p, why in failed.items()}
        entries += [(PEER_LABELS[p], p, sy.artifact_dir(p, checkpoint, work_dir)) for p in ready if p not in failed]
    if floors:
        work_dir.mkdir(parents=True, exist_ok=True)
        floor_entries, floor_skipped = _prepare_floors(first_manifest, work_dir, say)
        entries += floor_entries
        skipped |= floor_skipped
    precisions = {label: _precision(m) for label, _, m in exports}
    precisions |= {f"{label} bare decoder": p for label, p in precisions.items()}
    precisions |= {PEER_LABELS[p]: v for p, v in PEER_PRECISIONS.items()}
    precisions |= {"floor fp32": "fp32", "floor int8": "int8"}

    workers: list[_Worker] = []
    try:
        for label, kind, directory in entries:
            python = pythons[kind]["python"] if kind in pythons else None
            say(f"loading {label} from {directory}" + (f" with {python}" if python else ""))
            try:
                workers.append(_Worker(label, kind, directory, threads, python))
            except RuntimeError as exc:
                skipped[label] = "failed to load: " + str(exc).strip().splitlines()[-1]
        if not any(w.kind == "t5ort" for w in workers):
            raise RuntimeError(f"no export could be loaded: {skipped}")
        reference = next(w.label for w in workers if w.kind == "t5ort")
        measurements = []
        for w in [Workload(b, k, max_new_tokens) for b, k in pairs]:
            measurements += _run_workload(w, workers, pool, pad, repeats, reference, say)
        infos = []
        for wk in workers:
            end = wk.stop()
            infos.append(SystemInfo(label=wk.label, kind=wk.kind, artifact=str(wk.directory),
                                    artifact_mb=_size_mb(wk.kind, wk.directory),
                                    load_seconds=wk.info["load_seconds"],
                                    rss_after_load_mb=wk.info["rss_after_load_mb"], peak_rss_mb=end["peak_rss_mb"],
                                    python=wk.info.get("python", ""), precision=precisions.get(wk.label, ""),
                                    python_version=wk.info.get("python_version", ""),
                                    versions=wk.info.get("versions", {})))
    finally:
        for wk in workers:
            wk.close()
    info = machine(threads, **_versions())
    info["other processes' CPU time (all workloads)"] = (
        f"{sum(m.other_cpu_seconds for m in measurements if m.system == reference):.1f} s")
    settings = {"workloads": [list(p) for p in pairs], "max_new_tokens": max_new_tokens,
                "threads": threads, "repeats": repeats, "pause_s": PAUSE_S, "bare": bare,
                "inputs": "seeded random ids" if inputs is None else f"{len(list(inputs))} given",
                "checkpoint": None if checkpoint is None else str(checkpoint), "peers": list(peers),
                "peer_python": {p: probe["python"] for p, probe in pythons.items()}, "floors": floors}
    return BenchResult(machine=info, settings=settings, reference=reference, systems=tuple(infos),
                       measurements=tuple(measurements), skipped=skipped)


def _agreement(tokens, reference) -> float | None:
    if tokens is None or reference is None or np.shape(tokens) != np.shape(reference):
        return None
    return float(np.mean(np.asarray(tokens) == np.asarray(reference)))


def _run_workload(w: Workload, workers: list[_Worker], pool, pad: int, repeats: int, reference: str,
                  say) -> list[Measurement]:
    ids, mask = _batch(pool, w.batch, pad)
    request = sy.Request(ids, mask, w.num_beams, w.new_tokens)
    first = sy.Request(ids, mask, w.num_beams, 1)
    meter = OtherCPU([wk.process.pid for wk in workers])
    say(f"{w.name}: warming up")
    tokens = {}
    for wk in workers:
        time.sleep(PAUSE_S)
        tokens[wk.label] = wk.call(request)["tokens"]
    seconds: dict[str, list[float]] = {wk.label: [] for wk in workers}
    cpu: dict[str, list[float]] = {wk.label: [] for wk in workers}
    first_token: dict[str, list[float]] = {wk.label: [] for wk in workers}
    for i in range(repeats):
        say(f"{w.name}: round {i + 1}/{repeats}")
        k = i % len(workers)
        order = workers[k:] + workers[:k]
        for wk in order if i % 2 == 0 else order[::-1]:
            time.sleep(PAUSE_S)
            out = wk.call(request)
            seconds[wk.label].append(out["seconds"])
            cpu[wk.label].append(out["cpu_seconds"])
            time.sleep(PAUSE_S)
            first_token[wk.label].append(wk.call(first)["seconds"])
    other = meter.read()["seconds"]
    return [Measurement(system=wk.label, workload=w, seconds=tuple(seconds[wk.label]),
                        first_token_seconds=tuple(first_token[wk.label]), source_tokens=int(mask.sum()),
                        token_agreement=_agreement(tokens[wk.label], tokens[reference]), other_cpu_seconds=other,
                        cpu_seconds=tuple(cpu[wk.label]))
            for wk in workers]
