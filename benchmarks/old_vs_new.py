"""t5ort's old export (format 3, optimum-based, commit 0db43c2) against its new one (format 4), side by side.

The old: optimum's with-past decoder, which concatenates its KV cache every step (and an in-flight step
graph); the new: t5ort's own exporter, one decoder graph that keeps the self-attention cache in place.

    /work/venv5/bin/python benchmarks/old_vs_new.py [--repeats 5] [--threads 2] [--shapes t5-small,flan-t5-base]
        [--flatness-shapes t5-small] [--precisions fp32,int8] [--json FILE] [--workdir benchmarks/.work]
        [--prepare-only] [--quick] [--reexport [old|new]]
        [--old-root /tmp/t5ort-old] [--old-commit 0db43c2] [--old-python /work/venvold/bin/python]
        [--new-root REPO] [--new-python PYTHON]

The old side's Python needs optimum (transformers < 4.58): ``python3 -m venv .venv-optimum &&
.venv-optimum/bin/pip install torch==2.13.0 'optimum-onnx[onnxruntime]' onnx`` and
``--old-python .venv-optimum/bin/python``.

Each side is a checkout of t5ort (``--old-root``, made with ``git worktree add`` from ``--old-commit`` when
missing; ``--new-root``, this repository) and the Python that runs it (the old exporter needs optimum,
which ``--old-python``'s environment has). Every child process runs with ``PYTHONPATH=<root>`` and
``PYTHONSAFEPATH=1`` (so neither the working directory nor an editable install of the other checkout is
imported) and checks that ``t5ort.__file__`` is in its own root before it does anything.

1. Checkpoints: seeded random checkpoints (``torch.manual_seed``, no download) of each shape, built with
   the new side's transformers, in ``WORKDIR/old_vs_new/checkpoints``. ``config.json`` holds both
   ``tie_word_embeddings`` (what transformers 4.x reads) and ``scale_decoder_outputs`` (what 5.x derives from
   it), and an untied head has its own random weights (5.x ties every T5 head but keeps one that differs
   from the embedding); each side's Python then loads the checkpoint and must find the same tie and the
   same logits.
2. Exports: ``t5ort.export(ckpt, out, quantize=None | "int8")`` by each side, each in its own process,
   cached in ``WORKDIR/old_vs_new/exports/<side>/<shape>-<precision>`` with the export's wall time and the
   exporting process's peak RSS (``os.wait4``'s ``ru_maxrss``: that process and the children it waited
   for) beside it. An export is remade when the checkpoint changes, when the side's manifest format
   changes, or with ``--reexport`` (both sides, or ``--reexport new``: the side named). The table says which
   commit made each export: the new side's exporter may have changed since without changing the format.
3. Generation: ``t5ort.bench``'s worker (``t5ort.load(dir, threads)``, ``generate(input_ids=...,
   attention_mask=..., max_new_tokens=N, min_new_tokens=N, num_beams=..., output_logits=True)``) run
   by each side's own Python, driven by ``t5ort.bench``'s harness: one warm-up call each, then
   ``--repeats`` rounds old, new, old, new, ... 0.2 s apart, each whole call followed by a one-token call
   (time to first token). ms/step is the median whole call (encoder included, i.e. amortized over the
   steps) / N, N = 32 new tokens. Workloads: batch 1 (a 128-token source), batch 16 (that row then
   seeded lengths 32..256, right-padded with an attention mask), 4 beams at batch 1.
4. Length flatness: one forced 512-token generation (``stream(..., min_new_tokens=512)``, which both
   sides have, timing every step as its event arrives) at batch 1 and batch 16 on the fp32 exports,
   after one untimed run each, repeats alternating which side goes first. Step 1 also runs the encoder,
   so the first window is steps 2-33; the last is steps 481-512; ratio = last / first.

``--prepare-only`` builds, checks and exports (both sides: fp32 and int8 of every shape of ``--shapes``,
fp32 of those of ``--flatness-shapes``) and measures nothing, so that a later run only measures. ``--quick`` is a smoke
run: tiny shapes (``tiny-relu`` tied, ``tiny-gated`` untied) unless ``--shapes`` is given, 8 new tokens,
64 flatness steps in windows of 16, one repeat. Progress goes to stderr, the markdown tables to stdout,
everything (raw seconds and per-step times included) to ``--json``.
"""

from __future__ import annotations

# Only the standard library at the top: this file is also the child process of both sides (``--child``),
# which imports its side's t5ort, numpy and (to build or export) torch inside the functions that need them.
import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
EXPECT_ENV = "OLD_VS_NEW_T5ORT"  # the t5ort package directory a child must import

COMMON = dict(vocab_size=32128, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
SHAPES = {
    "t5-small": dict(d_model=512, d_kv=64, num_heads=8, d_ff=2048, num_layers=6, num_decoder_layers=6,
                     feed_forward_proj="relu", tie_word_embeddings=True),
    "flan-t5-base": dict(d_model=768, d_kv=64, num_heads=12, d_ff=2048, num_layers=12, num_decoder_layers=12,
                         feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # --quick's stand-ins: the same two kinds (ReLU tied, gated-GELU untied), tiny.
    "tiny-relu": dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=2,
                      feed_forward_proj="relu", tie_word_embeddings=True),
    "tiny-gated": dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=2,
                       feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
QUICK_SHAPES = {"t5-small": "tiny-relu", "flan-t5-base": "tiny-gated"}
PRECISIONS = {"fp32": None, "int8": "int8"}  # name -> t5ort.export's quantize
SOURCE_LENGTH = 128  # batch 1's source; batch 16's other rows are 32..256
PAUSE_S = 0.2  # before each timed call, as t5ort.bench's harness


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the child processes (run by either side's Python) ----------------------------------------------


def _side_t5ort():
    """Import t5ort and check that it is this side's (the directory in $OLD_VS_NEW_T5ORT)."""
    import t5ort

    got, want = Path(t5ort.__file__).resolve().parent, Path(os.environ[EXPECT_ENV]).resolve()
    if got != want:
        raise SystemExit(f"this child imported t5ort from {got}, not from {want}: check PYTHONPATH and "
                         "editable installs")
    return t5ort


def _child_versions() -> None:
    from importlib.metadata import PackageNotFoundError, version

    t5ort = _side_t5ort()
    from t5ort.runtime.manifest import FORMAT_VERSION

    out = {"python": sys.version.split()[0], "t5ort": str(Path(t5ort.__file__).resolve().parent),
           "format_version": FORMAT_VERSION}
    for dist in ("numpy", "onnxruntime", "onnx", "transformers", "torch", "optimum", "optimum-onnx"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    print(json.dumps(out))


def _verify_ids():
    import numpy as np

    return np.arange(3, 35, dtype=np.int64)[None], np.array([[0, 5, 7, 9]], dtype=np.int64)


def _child_build(shape: str, path: str, reference: str, seed: int) -> None:
    """Build the seeded checkpoint of ``shape``, save it to ``path`` and its logits on fixed ids to ``reference``."""
    import numpy as np
    import torch
    import transformers
    from transformers import T5Config, T5ForConditionalGeneration

    spec = {**COMMON, **SHAPES[shape]}
    tied = spec["tie_word_embeddings"]
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**spec)).eval()
    if not tied and model.lm_head.weight is model.shared.weight:  # transformers 5 ties every T5 head
        model.lm_head.weight = torch.nn.Parameter(
            torch.empty_like(model.shared.weight).normal_(0.0, model.config.initializer_factor))
    model.save_pretrained(path)
    config = Path(path) / "config.json"
    saved = json.loads(config.read_text())
    saved["tie_word_embeddings"] = tied  # read by transformers 4.x (4.x saves it, 5.x writes True for all)
    saved["scale_decoder_outputs"] = tied  # 5.x's own name; 5.x also derives it from the line above
    config.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    ids, dec = _verify_ids()
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids), decoder_input_ids=torch.from_numpy(dec)).logits
    np.save(reference, logits.numpy())
    print(json.dumps({"parameters": sum(p.numel() for p in model.parameters()),
                      "transformers": transformers.__version__, "torch": torch.__version__}))


def _child_verify(path: str, reference: str, tied: str) -> None:
    """Load the checkpoint with this Python's transformers; report its tie and its logits' distance to the builder's."""
    import numpy as np
    import torch
    import transformers
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(path).eval()
    ids, dec = _verify_ids()
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids), decoder_input_ids=torch.from_numpy(dec)).logits.numpy()
    ref = np.load(reference)
    diff = float(np.abs(logits - ref).max())
    is_tied = model.lm_head.weight is model.shared.weight or bool(torch.equal(model.lm_head.weight,
                                                                               model.shared.weight))
    print(json.dumps({"transformers": transformers.__version__, "tied": is_tied, "max_abs_diff": diff,
                      "max_abs_logit": float(np.abs(ref).max()),
                      "ok": is_tied == (tied == "1") and diff <= 1e-4 + 1e-4 * float(np.abs(ref).max())}))


def _child_export(checkpoint: str, out: str, precision: str) -> None:
    t5ort = _side_t5ort()
    t5ort.export(checkpoint, out, force=True, quantize=PRECISIONS[precision], progress=lambda m: say(f"  {m}"))


class _Streamer:
    """A ``t5ort.bench`` system whose ``generate`` runs ``stream()`` and returns the seconds of every step
    where the harness's systems return their tokens (``systems.worker`` sends back whatever that is)."""

    def __init__(self, directory: Path, threads: int):
        self.rt = _side_t5ort().load(directory, threads=threads)

    def generate(self, r):
        import numpy as np

        marks = [time.perf_counter()]
        for _event in self.rt.stream(input_ids=r.input_ids, attention_mask=r.attention_mask,
                                     max_new_tokens=r.new_tokens, min_new_tokens=r.new_tokens):
            marks.append(time.perf_counter())
        if len(marks) != r.new_tokens + 1:
            raise RuntimeError(f"stream() gave {len(marks) - 1} steps, not {r.new_tokens}")
        return marks[-1] - marks[0], np.diff(marks)


def _child_worker(kind: str, directory: str, threads: str) -> None:
    """``t5ort.bench.systems.worker`` (both sides have the same), with the ``stream`` kind added."""
    _side_t5ort()
    from t5ort.bench import systems

    if kind == "stream":  # a t5ort worker (as the harness knows it) whose system is the streamer
        systems.load = lambda _kind, d, t: _Streamer(d, t)
        kind = "t5ort"
    systems.worker(kind, directory, int(threads))


def child(args: list[str]) -> None:
    ops = {"versions": _child_versions, "build": lambda s, p, r, seed: _child_build(s, p, r, int(seed)),
           "verify": _child_verify, "export": _child_export, "worker": _child_worker}
    ops[args[0]](*args[1:])


# ---- the two sides ----------------------------------------------------------------------------------


@dataclass
class Side:
    name: str  # "old" or "new"
    python: str
    root: Path
    versions: dict = field(default_factory=dict)
    commit: str = ""

    def child_command(self, *args: str, python: str | None = None) -> tuple[list[str], dict[str, str]]:
        """As ``t5ort.bench.systems.child_command`` (whose environment it keeps: thread-pool sizes for a
        worker), but this side's Python (``python`` is ignored) running this script's ``--child``, importing
        this side's t5ort only."""
        _command, env = ORIGINAL_CHILD_COMMAND(*args)
        others = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), *others])
        env["PYTHONSAFEPATH"] = "1"
        env[EXPECT_ENV] = str(self.root / "t5ort")
        return [self.python, str(SCRIPT), "--child", *args], env

    def run(self, *args: str) -> dict:
        """A one-shot child whose stdout is one JSON line."""
        command, env = self.child_command(*args)
        out = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def describe(self) -> None:
        self.versions = self.run("versions")
        git = ["git", "-C", str(self.root)]
        self.commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip() or "?"
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "t5ort"], capture_output=True, text=True).stdout
        if dirty.strip():
            self.commit += " (+ uncommitted changes in t5ort/)"


ORIGINAL_CHILD_COMMAND = None  # t5ort.bench.systems.child_command before the workers' patch


def side_worker(side: Side, label: str, kind: str, directory: Path, threads: int):
    """A ``t5ort.bench`` harness worker (its own process, requests over pipes) run by ``side``."""
    from unittest import mock

    from t5ort.bench import harness, systems

    with mock.patch.object(systems, "child_command", side.child_command):
        return harness._Worker(label, kind, directory, threads)


def ensure_old_root(root: Path, commit: str) -> None:
    if (root / "t5ort" / "__init__.py").is_file():
        return
    say(f"making the old checkout: git worktree add --detach {root} {commit}")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(root), commit], check=True,
                   stdout=sys.stderr)


# ---- preparation: checkpoints and exports -----------------------------------------------------------


def measured_run(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command`` (its stdout to stderr); its wall seconds, its peak RSS (MiB, that process and the
    children it waited for) and the CPU seconds other processes used meanwhile."""
    from t5ort.bench.machine import OtherCPU

    meter = OtherCPU()
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=sys.stderr.fileno())
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit code {process.returncode}; its error is above)")
    return {"wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "other_cpu_seconds": meter.read()["seconds"]}


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def ensure_checkpoint(shape: str, workdir: Path, builder: Side, sides: list[Side]) -> dict:
    """The checkpoint of ``shape`` (built and checked on first use); its record (WORKDIR/.../<shape>.json)."""
    base = workdir / "old_vs_new" / "checkpoints"
    path, record_path, reference = base / shape, base / f"{shape}.json", base / f"{shape}.reference.npy"
    if record_path.is_file() and (path / "config.json").is_file():
        return json.loads(record_path.read_text())
    base.mkdir(parents=True, exist_ok=True)
    say(f"building the seeded {shape}-shaped checkpoint in {path} with the {builder.name} side's transformers")
    built = builder.run("build", shape, str(path), str(reference), "0")
    tied = SHAPES[shape]["tie_word_embeddings"]
    checks = {}
    for side in sides:
        checks[side.name] = side.run("verify", str(path), str(reference), "1" if tied else "0")
        if not checks[side.name]["ok"]:
            raise RuntimeError(f"{shape}: the {side.name} side's transformers loads the checkpoint differently: "
                               f"{checks[side.name]}")
        say(f"  {side.name} side (transformers {checks[side.name]['transformers']}) loads it: tied="
            f"{checks[side.name]['tied']}, max |logit diff| {checks[side.name]['max_abs_diff']:.1e}")
    record = {"shape": shape, "config": {**COMMON, **SHAPES[shape]}, "seed": 0, "path": str(path),
              "built": dt.datetime.now().astimezone().isoformat(timespec="seconds"), **built, "loads": checks}
    _write_json(record_path, record)
    return record


def export_dir(workdir: Path, side: Side, shape: str, precision: str) -> Path:
    return workdir / "old_vs_new" / "exports" / side.name / f"{shape}-{precision}"


def ensure_export(workdir: Path, side: Side, shape: str, precision: str, checkpoint: dict, reexport: bool) -> dict:
    """The export of ``shape`` by ``side`` in ``precision`` (made on first use); its record, with the export's
    wall time and peak RSS, kept beside it (``<dir>.json``)."""
    out = export_dir(workdir, side, shape, precision)
    record_path = out.with_name(out.name + ".json")
    manifest = out / "t5ort.json"
    if not reexport and record_path.is_file() and manifest.is_file():
        record = json.loads(record_path.read_text())
        fmt = json.loads(manifest.read_text()).get("format_version")
        if record.get("checkpoint_built") == checkpoint["built"] and fmt == side.versions["format_version"]:
            return record
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"{side.name} side ({side.commit}): exporting {shape} {precision} to {out}")
    command, env = side.child_command("export", checkpoint["path"], str(out), precision)
    measured = measured_run(command, env)
    say(f"  {measured['wall_seconds']:.1f} s, peak RSS {measured['peak_rss_mb']:.0f} MiB, other processes "
        f"{measured['other_cpu_seconds']:.1f} CPU s meanwhile")
    record = {"side": side.name, "shape": shape, "precision": precision, "directory": str(out), **measured,
              "size_mb": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6,
              "format_version": json.loads(manifest.read_text()).get("format_version"),
              "commit": side.commit, "versions": side.versions, "checkpoint_built": checkpoint["built"],
              "exported": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    _write_json(record_path, record)
    return record


# ---- measurement ------------------------------------------------------------------------------------


def inputs(rows: int = 16) -> list[list[int]]:
    """Row 0: SOURCE_LENGTH seeded ids; rows 1..: lengths 32 and 256, then seeded lengths in 32..256."""
    import numpy as np

    rng = np.random.default_rng(1)
    lengths = [SOURCE_LENGTH, 32, 256, *rng.integers(32, 257, size=rows - 3).tolist()]
    first = np.random.default_rng(0).integers(3, 32000, size=SOURCE_LENGTH).tolist()
    return [first] + [rng.integers(3, 32000, size=int(n)).tolist() for n in lengths[1:rows]]


def measure_generation(workdir: Path, sides: list[Side], shape: str, precision: str, pool, new_tokens: int,
                       threads: int, repeats: int) -> dict:
    from t5ort.bench import harness
    from t5ort.bench.results import Workload

    workloads = [Workload(1, 1, new_tokens), Workload(16, 1, new_tokens), Workload(1, 4, new_tokens)]
    workers = []
    try:
        for side in sides:
            say(f"{shape} {precision}: loading the {side.name} side's export")
            workers.append(side_worker(side, f"{side.name} {precision}", "t5ort",
                                       export_dir(workdir, side, shape, precision), threads))
        reference = workers[-1].label  # the new side's tokens; the old side's are compared with them
        measurements = []
        for w in workloads:
            measurements += harness._run_workload(w, workers, pool, COMMON["pad_token_id"], repeats, reference,
                                                  lambda m: say(f"{shape} {precision} {m}"))
        systems = {}
        for side, wk in zip(sides, workers):
            systems[side.name] = {**wk.info, **wk.stop()}
    finally:
        for wk in workers:
            wk.close()
    rows = []
    for m in measurements:
        lo, hi = m.ms_per_step_range
        rows.append({**asdict(m), "side": m.system.split()[0], "workload": m.workload.name,
                     "batch": m.workload.batch, "num_beams": m.workload.num_beams, "ms_per_step": m.ms_per_step,
                     "ms_per_step_min": lo, "ms_per_step_max": hi, "tokens_per_s": m.tokens_per_s,
                     "first_token_ms": m.first_token_ms, "cpu_ms_per_step": m.cpu_ms_per_step})
    return {"shape": shape, "precision": precision, "systems": systems, "measurements": rows}


def measure_flatness(workdir: Path, sides: list[Side], shape: str, pool, steps: int, window: int, threads: int,
                     repeats: int) -> list[dict]:
    import numpy as np
    from t5ort.bench import harness, systems

    workers, out = [], []
    try:
        for side in sides:
            say(f"flatness {shape}: loading the {side.name} side's fp32 export")
            workers.append(side_worker(side, side.name, "stream", export_dir(workdir, side, shape, "fp32"), threads))
        for batch in (1, 16):
            ids, mask = harness._batch(pool, batch, COMMON["pad_token_id"])
            request = systems.Request(ids, mask, 1, steps)
            times: dict[str, list] = {wk.label: [] for wk in workers}
            say(f"flatness {shape} batch {batch}: one untimed run each")
            for wk in workers:
                time.sleep(PAUSE_S)
                wk.call(request)
            for i in range(repeats):
                say(f"flatness {shape} batch {batch}: round {i + 1}/{repeats}")
                for wk in workers if i % 2 == 0 else workers[::-1]:
                    time.sleep(PAUSE_S)
                    times[wk.label].append(np.asarray(wk.call(request)["tokens"]) * 1e3)
            for wk in workers:
                runs = times[wk.label]
                first = statistics.median(float(t[1:1 + window].mean()) for t in runs)
                last = statistics.median(float(t[-window:].mean()) for t in runs)
                out.append({"shape": shape, "batch": batch, "side": wk.label, "steps": steps, "window": window,
                            "first_ms": first, "last_ms": last, "ratio": last / first,
                            "step1_ms": statistics.median(float(t[0]) for t in runs),
                            "step_ms": [t.tolist() for t in runs]})
        for wk in workers:
            wk.stop()
    finally:
        for wk in workers:
            wk.close()
    return out


# ---- the report -------------------------------------------------------------------------------------


def report(setup: dict, sides: list[Side], checkpoints: dict, exports: list[dict], generation: list[dict],
           flatness: list[dict]) -> str:
    from t5ort.bench.machine import markdown_table as table

    parts = ["## Setup", table(["", ""], [[k, str(v)] for k, v in setup.items()])]
    keys = ["python", "numpy", "onnxruntime", "onnx", "transformers", "torch", "optimum", "optimum-onnx"]
    parts.append(table(["", *[s.name for s in sides]],
                       [["checkout", *[str(s.root) for s in sides]], ["commit", *[s.commit for s in sides]],
                        ["python executable", *[s.python for s in sides]],
                        ["manifest format", *[str(s.versions.get("format_version")) for s in sides]]]
                       + [[k, *[s.versions.get(k, "-") for s in sides]] for k in keys]))
    parts.append("## Checkpoints (seeded random; built once, loaded by both sides' transformers)")
    parts.append(table(
        ["shape", "d_model / d_kv x heads / d_ff", "layers", "ff", "head", "parameters", "built with", "loads"],
        [[c["shape"], f"{c['config']['d_model']} / {c['config']['d_kv']}x{c['config']['num_heads']} / "
          f"{c['config']['d_ff']}", f"{c['config']['num_layers']}+{c['config']['num_decoder_layers']}",
          c["config"]["feed_forward_proj"], "tied" if c["config"]["tie_word_embeddings"] else "untied",
          f"{c['parameters'] / 1e6:.1f} M", f"transformers {c['transformers']}",
          "; ".join(f"{v['transformers']}: {'tied' if v['tied'] else 'untied'}, |dlogit| {v['max_abs_diff']:.0e}"
                    for v in c["loads"].values())] for c in checkpoints.values()]))
    parts.append("## Exports (each in its own process; peak RSS of that process; other CPU = what other processes "
                 "used meanwhile: well above 0 means the machine was busy)")
    parts.append(table(
        ["shape", "precision", "side", "export s", "peak RSS", "size on disk", "format", "commit", "exported",
         "other CPU s"],
        [[e["shape"], e["precision"], e["side"], f"{e['wall_seconds']:.1f}", f"{e['peak_rss_mb']:.0f} MiB",
          f"{e['size_mb']:.1f} MB", str(e["format_version"]), e["commit"], e["exported"],
          f"{e['other_cpu_seconds']:.1f}"] for e in exports]))
    if generation:
        parts.append(f"## Generation: ms per step (median of {setup['repeats']} interleaved calls; whole call incl. "
                     f"the encoder / {setup['new tokens per row']} forced new tokens; range = fastest-slowest)")
        rows = []
        for g in generation:
            by = {(m["side"], m["workload"]): m for m in g["measurements"]}
            for workload in dict.fromkeys(m["workload"] for m in g["measurements"]):
                old, new = by[("old", workload)], by[("new", workload)]
                agree = old["token_agreement"]
                rows.append([g["shape"], g["precision"], workload,
                             f"{old['ms_per_step']:.2f} ({old['ms_per_step_min']:.2f}-{old['ms_per_step_max']:.2f})",
                             f"{new['ms_per_step']:.2f} ({new['ms_per_step_min']:.2f}-{new['ms_per_step_max']:.2f})",
                             f"{new['ms_per_step'] / old['ms_per_step']:.2f}x",
                             f"{old['first_token_ms']:.1f} / {new['first_token_ms']:.1f}",
                             "-" if agree is None else f"{100 * agree:.1f}%", f"{new['other_cpu_seconds']:.1f}"])
        parts.append(table(["shape", "precision", "workload", "old ms/step", "new ms/step", "new / old",
                            "first token ms old / new", "old tokens = new", "other CPU s"], rows))
        parts.append("### Worker processes (load, RSS after load, peak RSS over the whole run)")
        parts.append(table(["shape", "precision", "side", "load s", "RSS after load", "peak RSS"],
                           [[g["shape"], g["precision"], side, f"{s['load_seconds']:.1f}",
                             f"{s['rss_after_load_mb']:.0f} MiB", f"{s['peak_rss_mb']:.0f} MiB"]
                            for g in generation for side, s in g["systems"].items()]))
    if flatness:
        f0 = flatness[0]
        parts.append(f"## Length flatness: ms/step of one forced {f0['steps']}-step stream() (fp32; median of "
                     f"{setup['repeats']}; step 1 also runs the encoder, so the first window starts at step 2)")
        rows = []
        for f in flatness:
            w, n = f["window"], f["steps"]
            new = next(x for x in flatness if x["shape"] == f["shape"] and x["batch"] == f["batch"]
                       and x["side"] == "new")
            rows.append([f["shape"], str(f["batch"]), f["side"], f"{f['step1_ms']:.1f}", f"{f['first_ms']:.2f}",
                         f"{f['last_ms']:.2f}", f"{f['ratio']:.2f}",
                         "" if f["side"] == "new" else f"{new['last_ms'] / f['last_ms']:.2f}x"])
        parts.append(table(["shape", "batch", "side", "step 1 ms (+ encoder)", f"ms/step 2-{w + 1}",
                            f"ms/step {n - w + 1}-{n}", "last / first", f"new / old at {n - w + 1}-{n}"], rows))
    return "\n\n".join(parts)


# ---- main -------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=SCRIPT.parent / ".work",
                   help="cache of the checkpoints and exports (in WORKDIR/old_vs_new)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved timed rounds (default 5; 1 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="threads of every runtime (default 2)")
    p.add_argument("--shapes", default=None, help=f"any of {','.join(SHAPES)} (default t5-small,flan-t5-base; "
                   "with --quick their tiny stand-ins)")
    p.add_argument("--flatness-shapes", default=None, help="shapes of the length-flatness runs (default t5-small, "
                   "or its stand-in with --quick; '' for none)")
    p.add_argument("--precisions", default="fp32,int8", help="default fp32,int8")
    p.add_argument("--prepare-only", action="store_true", help="build, check and export; measure nothing")
    p.add_argument("--reexport", nargs="?", const="all", choices=["all", "old", "new"],
                   help="remake the exports of both sides (or of the side named) even if cached")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny shapes, 8 new tokens, 64 flatness "
                   "steps, one repeat")
    p.add_argument("--json", type=Path, help="also write everything to this JSON file")
    p.add_argument("--old-root", type=Path, default=Path("/tmp/t5ort-old"))
    p.add_argument("--old-commit", default="0db43c2", help="checked out into --old-root when it is missing")
    p.add_argument("--old-python", default="/work/venvold/bin/python")
    p.add_argument("--new-root", type=Path, default=REPO)
    p.add_argument("--new-python", default=sys.executable)
    args = p.parse_args()

    def names(value, default):
        chosen = [s for s in (default if value is None else value).split(",") if s]
        if args.quick and value is None:
            chosen = [QUICK_SHAPES.get(s, s) for s in chosen]
        for s in chosen:
            if s not in SHAPES:
                p.error(f"unknown shape {s!r}; use any of {', '.join(SHAPES)}")
        return chosen

    shapes = names(args.shapes, "t5-small,flan-t5-base")
    flat_shapes = names(args.flatness_shapes, "t5-small")
    precisions = [x for x in args.precisions.split(",") if x]
    if any(x not in PRECISIONS for x in precisions):
        p.error(f"--precisions: any of {', '.join(PRECISIONS)}")
    repeats = args.repeats or (1 if args.quick else 5)
    new_tokens, steps, window = (8, 64, 16) if args.quick else (32, 512, 32)

    from t5ort.bench import systems
    from t5ort.bench.machine import cpu_name

    global ORIGINAL_CHILD_COMMAND
    ORIGINAL_CHILD_COMMAND = systems.child_command
    ensure_old_root(args.old_root, args.old_commit)
    sides = [Side("old", args.old_python, args.old_root.resolve()), Side("new", args.new_python,
                                                                          args.new_root.resolve())]
    for side in sides:
        side.describe()
        say(f"{side.name} side: {side.python}, t5ort from {side.versions['t5ort']} ({side.commit}), manifest "
            f"format {side.versions['format_version']}, transformers {side.versions.get('transformers')}")

    checkpoints, exports = {}, []
    for shape in dict.fromkeys(shapes + flat_shapes):
        checkpoints[shape] = ensure_checkpoint(shape, args.workdir, sides[1], sides)
        for precision in precisions if shape in shapes else ["fp32"]:
            for side in sides:
                exports.append(ensure_export(args.workdir, side, shape, precision, checkpoints[shape],
                                             args.reexport in ("all", side.name)))

    setup = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu_name(),
             "logical cpus": os.cpu_count(), "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    if not args.prepare_only:
        setup |= {"threads per runtime": args.threads, "repeats": repeats, "new tokens per row": new_tokens,
                  "inputs": f"batch 1: {SOURCE_LENGTH} seeded ids; batch 16: that row, then seeded rows of 32..256 "
                            "(right-padded, attention_mask); beams: batch 1's row",
                  "flatness": f"{steps} forced steps, windows of {window}, batch 1 and 16 (the same rows)"}
    generation, flatness = [], []
    if not args.prepare_only:
        pool = inputs()
        for shape in shapes:
            for precision in precisions:
                generation.append(measure_generation(args.workdir, sides, shape, precision, pool, new_tokens,
                                                     args.threads, repeats))
        for shape in flat_shapes:
            flatness += measure_flatness(args.workdir, sides, shape, pool, steps, window, args.threads, repeats)
    print(report(setup, sides, checkpoints, exports, generation, flatness))
    if args.json:
        _write_json(args.json, {"setup": setup, "sides": [asdict(s) | {"root": str(s.root)} for s in sides],
                                "checkpoints": checkpoints, "exports": exports, "generation": generation,
                                "flatness": flatness})
        say(f"results written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
