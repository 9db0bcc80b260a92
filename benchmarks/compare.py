"""t5ort against Optimum, CTranslate2 and PyTorch, side by side, on a t5-small-shaped model on the CPU.

    /work/venv/bin/python benchmarks/compare.py [--repeats 5] [--threads 2]
        [--workloads greedy-1 ragged-16 beam4-1 growth] [--systems ...] [--quick]
        [--chart benchmarks/compare.png] [--json FILE] [--passive-omp]

Every system runs the same seeded random t5-small-shaped checkpoint (see
``_model.py``) with ``--threads`` threads and returns the raw logits of every
step:

- ``t5ort fp32`` / ``t5ort int8``: ``rt.generate(..., output_logits=True)`` on a
  t5ort export (encoder graph with the cross-attention keys/values, with-past
  decoder graph, one memory-mapped weights.bin; ``t5ort.export(ckpt, out,
  quantize="int8")`` for int8: dynamic int8 weights, one scale per tensor);
- ``PyTorch``: transformers' ``generate(output_logits=True,
  return_dict_in_generate=True)``, ``torch.set_num_threads(threads)``;
- ``Optimum``: ``ORTModelForSeq2SeqLM`` (optimum-onnx) on optimum's own export
  (encoder + merged decoder), the same ``generate`` call, ONNX Runtime sessions
  with exactly t5ort's session options (``threads`` intra-op threads, sequential,
  full graph optimisation, dynamic work blocks), optimum's default IO binding
  (off on the CPU);
- ``CT2 fp32`` / ``CT2 int8``: CTranslate2 ``Translator(intra_threads=threads,
  inter_threads=1, compute_type="float32"/"int8")`` on its conversion of the
  checkpoint (``quantization=None``/``"int8"``),
  ``translate_batch(tokens, max_decoding_length=N, min_decoding_length=N,
  beam_size=..., return_logits_vocab=True)``. The random checkpoint has no
  tokenizer: the conversion gets a stub that names token i ``t{i}`` (0, 1, 2:
  ``<pad>``, ``</s>``, ``<unk>``), and the inputs are those names. CTranslate2
  adds no EOS to T5 sources. ``min_decoding_length`` works like transformers'
  ``min_new_tokens`` (EOS is masked for the first N steps, so with min = max = N
  it returns N tokens and N logit rows, as the others); an EOS that is
  generated does take a decoding step (it counts in ``max_decoding_length``)
  but is left out of the hypothesis unless ``return_end_token=True``. Its
  returned logits are the processed ones: the EOS column is -3.4e38 while the
  minimum length holds (left out of the comparison below), and with
  ``beam_size > 1`` version 4.8.5 returns empty logits (shown as "logits
  returned: no"; it is still timed with ``return_logits_vocab=True``).

and, measured in the same run:

- ``t5ort fp32 bare decoder``: the t5ort session without the decoding loop:
  encode, then ``rt.graphs.step`` N times on a fixed token (no search, no
  processors, no logits kept): generate / bare is the loop's overhead;
- ``bandwidth floor``: numpy float32 matrix products over the decoder's
  per-step weights (6 x (self-attn q,k,v,o + cross-attn q,o + FFN wi,wo) +
  lm_head = 38.5M parameters, 154 MB), [rows, 512] activations times [in, out] weights, ``threads``
  OpenBLAS threads: what one step costs if it only streams its weights from
  memory (the median step; the best step is shown too). The int8 floor is only
  derived (fp32 / 4), not measured.

Workloads (``--workloads``): ``greedy-1`` greedy, batch 1, 32 input tokens,
32 new tokens forced (min = max new tokens); ``ragged-16`` greedy, batch 16,
seeded input lengths 8..64 (right-padded; CTranslate2 gets unpadded rows);
``beam4-1`` beam search, 4 beams, batch 1; ``growth`` t5ort fp32 (and its bare
decoder) generating 512 forced tokens, batch 1, each step timed (``rt.stream``
events), reported at steps ~16 and ~512.

What is reported, per system and workload: ms/step (one whole call, encoder
included, / new tokens), tokens/s (batch x new tokens / second), time to the
first token (t5ort: first ``rt.stream`` event, or a max_new_tokens=1 generate
for beams; the others: a max_new_tokens=1 call), peak RSS (each system lives in
its own process: VmHWM at the end, load included), the artifact's size on disk,
and the max abs difference of the first step's raw logits to t5ort fp32's
(proof that all run the same model). Runs are interleaved: each repeat runs
every system once, in a rotating order, with a 0.2 s pause before each run;
after one warm-up run each, the tables show medians of ``--repeats`` runs. The
CPU time other processes took during each workload is reported: the numbers are
clean only when it is ~0. Libraries whose threads meet at a barrier after every
operation (OpenMP in CTranslate2 and PyTorch, OpenBLAS in the floor) slow down
by large factors when another process takes a core away; ONNX Runtime's pool
much less. ``--passive-omp`` sets ``OMP_WAIT_POLICY=PASSIVE`` for every system
(the default leaves each library's own setting).

Artifacts are cached in ``--workdir`` (default benchmarks/.work; delete an entry
to rebuild it). Progress goes to stderr, results (markdown) to stdout; a chart
to ``--chart``, everything to ``--json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

import _compare_systems as cs
from _model import DEFAULT_WORKDIR, PAUSE_S, T5_SMALL, _busy_minus_own, machine, markdown_table, say

SYSTEMS = {  # worker name -> label
    "t5ort-fp32": "t5ort fp32",
    "t5ort-int8": "t5ort int8",
    "pytorch": "PyTorch",
    "optimum": "Optimum",
    "ct2-fp32": "CT2 fp32",
    "ct2-int8": "CT2 int8",
}
BARE = "t5ort fp32 bare decoder"
FLOOR = "bandwidth floor"
NEEDS = {  # worker name -> modules it needs
    "t5ort-fp32": ["onnxruntime"],
    "t5ort-int8": ["onnxruntime"],
    "pytorch": ["torch", "transformers"],
    "optimum": ["torch", "optimum.onnxruntime"],
    "ct2-fp32": ["ctranslate2"],
    "ct2-int8": ["ctranslate2"],
}
PREPARE_NEEDS = {"t5ort-fp32": ["torch", "optimum.exporters"], "t5ort-int8": ["torch", "optimum.exporters"],
                 "optimum": ["optimum.exporters"], "ct2-fp32": ["torch", "transformers"],
                 "ct2-int8": ["torch", "transformers"], "pytorch": ["torch", "transformers"]}
EOS = T5_SMALL["eos_token_id"]


def _missing(modules: list[str]) -> list[str]:
    out = []
    for m in modules:
        try:
            if importlib.util.find_spec(m) is None:
                out.append(m)
        except ModuleNotFoundError:
            out.append(m)
    return out


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


# ---- the other-process CPU meter, with live workers taken out -----------------------------------------


def _proc_cpu(pid: int) -> float:
    """utime + stime (+ reaped children's) of a live process, seconds."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in rest[11:15]) / os.sysconf("SC_CLK_TCK")


class OtherCPU:
    """CPU seconds that processes other than this one and its workers used since ``start()``.

    ``_model.other_cpu_meter`` subtracts this process and its reaped children; the workers are
    alive while the timings run, so their CPU time is taken out here from /proc/PID/stat.
    """

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.start()

    def _reading(self) -> float:
        return _busy_minus_own() - sum(_proc_cpu(p) for p in self.pids)

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), self._reading()

    def read(self) -> dict:
        wall, other = time.perf_counter() - self.t0, self._reading() - self.c0
        return {"seconds": other, "wall_seconds": wall, "share": other / (wall * (os.cpu_count() or 1))}


# ---- workers -------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, ctx, name: str, workdir: Path, threads: int):
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=cs.worker, args=(name, str(workdir), threads, child), daemon=True)
        self.process.start()
        child.close()
        status, self.info = self.conn.recv()
        if status != "ok":
            self.process.join(10)
            raise RuntimeError(self.info)

    def ask(self, op: str, workload: cs.Workload, keep: bool = False) -> dict:
        self.conn.send((op, workload, keep))
        status, out = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.name} {op} {workload.name}:\n{out}")
        return out

    def stop(self) -> dict:
        self.conn.send(("stop", None, False))
        _status, out = self.conn.recv()
        self.process.join(30)
        return out


def prepare_artifacts(ctx, names: list[str], workdir: Path) -> dict[str, str]:
    """Make the missing artifacts, each in a throwaway process; returns {name: why skipped} for failures."""
    skipped = {}
    for name in ["pytorch", *names]:  # the checkpoint first: everything else is made from it
        if cs.artifact_ready(name, workdir):
            continue
        missing = _missing(PREPARE_NEEDS[name])
        if missing:
            skipped[name] = f"its artifact is missing and making it needs {', '.join(missing)}"
            continue
        start = time.perf_counter()
        p = ctx.Process(target=cs.prepare, args=(name, str(workdir)))
        p.start()
        p.join()
        if p.exitcode != 0 or not cs.artifact_ready(name, workdir):
            skipped[name] = f"making its artifact failed (exit code {p.exitcode}; see stderr)"
        else:
            say(f"{name}: artifact made in {time.perf_counter() - start:.0f} s")
    return skipped


# ---- one workload ----------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _window(step_seconds: list[float], at: int, half: int = 4) -> float:
    """Median seconds of the steps around index ``at`` (0-based step index; step 0 includes the encoder)."""
    lo, hi = max(1, at - half), min(len(step_seconds), at + half)
    return _median(step_seconds[lo:hi])


def run_workload(w: cs.Workload, workers: dict[str, Worker], repeats: int) -> dict:
    """Warm up, then run every entry of the workload interleaved ``repeats`` times; raw per-run numbers."""
    entries = []  # (label, worker, op)
    if w.name == "growth":
        if "t5ort-fp32" in workers:
            entries += [(SYSTEMS["t5ort-fp32"], "t5ort-fp32", "stream"), (BARE, "t5ort-fp32", "bare")]
    else:
        entries += [(label, name, "generate") for name, label in SYSTEMS.items() if name in workers]
        if "t5ort-fp32" in workers:
            entries.append((BARE, "t5ort-fp32", "bare"))
    if "floor" in workers:
        entries.append((FLOOR, "floor", "floor"))

    meter = OtherCPU([wk.process.pid for wk in workers.values()])
    raw = {label: {"runs": [], "first_token": []} for label, _, _ in entries}
    say(f"{w.name}: warming up")
    warm = {}
    for label, name, op in entries:
        time.sleep(PAUSE_S)
        warm[label] = workers[name].ask(op, w, keep=True)
    for i in range(repeats):
        say(f"{w.name}: repeat {i + 1}/{repeats}")
        k = i % len(entries)
        order = entries[k:] + entries[:k]
        for label, name, op in order if i % 2 == 0 else order[::-1]:
            time.sleep(PAUSE_S)
            out = workers[name].ask(op, w)
            raw[label]["runs"].append(out.get("seconds", out.get("step_seconds")))
            if op == "generate":
                time.sleep(PAUSE_S)
                raw[label]["first_token"].append(workers[name].ask("first_token", w)["seconds"])
    return {"entries": entries, "raw": raw, "warm": warm, "other_cpu": meter.read()}


def summarize(w: cs.Workload, run: dict) -> dict:
    """Medians per entry, and the logits/sequence checks against t5ort fp32 from the warm-up runs."""
    rows = {}
    for label, name, op in run["entries"]:
        r = run["raw"][label]
        row = {"system": name, "op": op}
        if op == "generate":
            seconds = _median(r["runs"])
            row.update(ms_per_step=1000 * seconds / w.new_tokens, ms_per_call=1000 * seconds,
                       tokens_per_s=w.batch * w.new_tokens / seconds,
                       first_token_ms=1000 * _median(r["first_token"]),
                       logits_returned=run["warm"][label]["logits_returned"])
        elif op == "bare":
            totals = [sum(s) for s in r["runs"]]
            row.update(ms_per_step=1000 * _median(totals) / w.new_tokens, ms_per_call=1000 * _median(totals),
                       tokens_per_s=w.batch * w.new_tokens / _median(totals),
                       steps_only_ms=1000 * _median([_median(s[1:]) for s in r["runs"]]),
                       encoder_ms=1000 * _median([s[0] for s in r["runs"]]))
        elif op == "stream":
            totals = [sum(s) for s in r["runs"]]
            row.update(ms_per_step=1000 * _median(totals) / w.new_tokens, ms_per_call=1000 * _median(totals),
                       tokens_per_s=w.batch * w.new_tokens / _median(totals),
                       first_token_ms=1000 * _median([s[0] for s in r["runs"]]))
        elif op == "floor":
            row.update(ms_per_step=1000 * _median([_median(s) for s in r["runs"]]),
                       best_ms=1000 * min(min(s) for s in r["runs"]))
        if op in ("stream", "bare"):  # cost growth: per-step times around ~16 and at the end
            per_step = np.median(np.array([s for s in r["runs"]]), axis=0)
            row.update(ms_at_16=1000 * _window(list(per_step), 16),
                       ms_at_end=1000 * _window(list(per_step), w.new_tokens - 4),
                       per_step_ms=[1000 * float(v) for v in per_step])
        row["all_seconds"] = r["runs"]
        rows[label] = row

    # correctness: first-step raw logits and sequences against t5ort fp32
    ref = run["warm"].get(SYSTEMS["t5ort-fp32"])
    checks = {}
    if ref is not None and "first_step_logits" in ref and ref["first_step_logits"] is not None:
        ref_logits, ref_seq = ref["first_step_logits"], ref["sequences"]
        for label, name, op in run["entries"]:
            out = run["warm"][label]
            if op != "generate" or label == SYSTEMS["t5ort-fp32"]:
                continue
            check = {"max_abs_logit": float(np.abs(ref_logits).max())}
            logits = out.get("first_step_logits")
            if logits is None:
                check["max_abs_diff"] = None
                check["note"] = "returns no logits here"
            elif logits.shape != ref_logits.shape:
                check["max_abs_diff"] = None
                check["note"] = f"first-step logits of shape {logits.shape} vs {ref_logits.shape}"
            else:
                cols = np.ones(logits.shape[-1], dtype=bool)
                if name.startswith("ct2"):  # min_decoding_length masks EOS in the returned logits (-3.4e38)
                    cols[EOS] = False
                    check["note"] = "EOS column excluded (CT2 returns it masked while min_decoding_length holds)"
                check["max_abs_diff"] = float(np.abs(logits[:, cols] - ref_logits[:, cols]).max())
            seq = out.get("sequences")
            check["sequences_equal"] = bool(seq is not None and seq.shape == ref_seq.shape
                                            and np.array_equal(seq, ref_seq))
            checks[label] = check
    return {"workload": asdict(w), "rows": rows, "checks": checks, "other_cpu": run["other_cpu"]}


# ---- reporting ---------------------------------------------------------------------------------------------


def _f(value, fmt: str = ".2f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return none
    return format(value, fmt)


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n:.0f} MB"


def report(res: dict) -> str:
    parts = ["## Machine", markdown_table(["", ""], [[k, str(v)] for k, v in res["machine"].items()])]
    if res["skipped"]:
        parts += ["Skipped: " + "; ".join(f"{SYSTEMS.get(k, k)}: {v}" for k, v in res["skipped"].items())]

    sysrows = []
    for name, s in res["systems"].items():
        label = SYSTEMS.get(name, FLOOR)
        sysrows.append([label, s.get("artifact", "-"), _mb(s.get("artifact_mb")), _f(s.get("load_seconds"), ".1f"),
                        _mb(s.get("rss_after_load_mb")), _mb(s.get("peak_rss_mb"))])
    parts += ["## Systems", markdown_table(
        ["system", "artifact", "size on disk", "load s", "RSS after load", "peak RSS (process, all workloads)"],
        sysrows)]

    repeats = res["settings"]["repeats"]
    for wr in res["workloads"]:
        w = wr["workload"]
        oc = wr["other_cpu"]
        parts.append(f"## {w['name']}: {w['title']}, {w['new_tokens']} new tokens forced")
        ref = wr["rows"].get(SYSTEMS["t5ort-fp32"], {}).get("ms_per_step")
        ref8 = wr["rows"].get(SYSTEMS["t5ort-int8"], {}).get("ms_per_step")
        table = []
        for label, r in wr["rows"].items():
            ms = r.get("ms_per_step")
            table.append([
                label, _f(ms), _f(r.get("ms_per_call"), ".1f"), _f(r.get("tokens_per_s"), ".1f"),
                _f(r.get("first_token_ms"), ".1f"),
                _f(ms / ref if ref and ms else None, ".2f") + ("x" if ref and ms else ""),
                _f(ms / ref8 if ref8 and ms else None, ".2f") + ("x" if ref8 and ms else ""),
                {True: "yes", False: "no"}.get(r.get("logits_returned"), "-"),
            ])
        parts.append(markdown_table(
            ["system", f"ms/step (median of {repeats})", "ms per call", "tokens/s", "first token ms",
             "/ t5ort fp32", "/ t5ort int8", "logits returned"], table))
        if w["name"] == "growth":
            g = [[label, _f(r.get("ms_at_16")), _f(r.get("ms_at_end")),
                  _f(r["ms_at_end"] / r["ms_at_16"] if r.get("ms_at_16") else None) + "x"]
                 for label, r in wr["rows"].items() if "ms_at_16" in r]
            parts.append(markdown_table(
                ["", "ms/step at ~16", f"ms/step at ~{w['new_tokens']}", "growth"], g))
        if wr["checks"]:
            parts.append(markdown_table(
                ["system", "first-step raw logits: max abs diff to t5ort fp32", "max abs logit",
                 "sequences equal to t5ort fp32", "note"],
                [[label, _f(c["max_abs_diff"], ".2e"), _f(c["max_abs_logit"]), str(c["sequences_equal"]),
                  c.get("note", "")] for label, c in wr["checks"].items()]))
        parts.append(f"CPU time of other processes during this workload: {oc['seconds']:.1f} s "
                     f"({100 * oc['share']:.0f}% of the machine over {oc['wall_seconds']:.0f} s)"
                     + ("" if oc["share"] < 0.05 else " -- NOISY: the timings shared the CPUs"))

    # the summary: t5ort vs each peer, vs the bare decoder and the bandwidth floor
    peers = [SYSTEMS[n] for n in ("pytorch", "optimum", "ct2-fp32", "ct2-int8")]
    ratio_rows = []
    for wr in res["workloads"]:
        rows = wr["rows"]
        if wr["workload"]["name"] == "growth":
            continue
        for mine in (SYSTEMS["t5ort-fp32"], SYSTEMS["t5ort-int8"]):
            if mine not in rows:
                continue
            m = rows[mine]["ms_per_step"]
            bare = rows[BARE]["ms_per_step"] if BARE in rows and mine == SYSTEMS["t5ort-fp32"] else None
            ratio_rows.append([wr["workload"]["name"], mine]
                              + [(f"{rows[p]['ms_per_step'] / m:.2f}x" if p in rows else "-") for p in peers]
                              + [(f"{m / bare:.2f}x" if bare else "-"),
                                 (f"{m / rows[FLOOR]['ms_per_step']:.2f}x" if FLOOR in rows else "-")])
    if ratio_rows:
        parts += ["## Ratios (> 1 in the peer columns: t5ort is faster)", markdown_table(
            ["workload", "t5ort", *[f"{p} / t5ort" for p in peers], f"t5ort / {BARE}", f"t5ort / {FLOOR}"],
            ratio_rows)]

    floor_rows = []
    for wr in res["workloads"]:
        rows, w = wr["rows"], wr["workload"]
        if FLOOR not in rows:
            continue
        f = rows[FLOOR]["ms_per_step"]
        gbps = res["systems"]["floor"]["params"] * 4 / (f / 1000) / 1e9
        bare = rows.get(BARE, {})
        t5 = rows.get(SYSTEMS["t5ort-fp32"], {})
        steady = bare.get("steps_only_ms") if w["name"] != "growth" else bare.get("ms_at_16")
        best = rows[FLOOR]["best_ms"]
        floor_rows.append([w["name"], str(w["batch"] * w["num_beams"]), _f(f), _f(best), f"{gbps:.1f}", _f(f / 4),
                           _f(steady), _f(t5.get("ms_per_step")),
                           _f(steady / f if steady else None) + "x"])
    if floor_rows:
        parts += ["## The floor", markdown_table(
            ["workload", "rows per step", "bandwidth floor ms/step (fp32, median)", "best step ms", "implied GB/s",
             "int8 weights floor ms (derived: fp32 / 4)", "bare decoder: one step ms (encoder excluded)",
             "t5ort fp32 ms/step (whole call / steps)", "bare step / floor"], floor_rows)]
    return "\n\n".join(parts)


def chart(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = []  # (group name, {label: ms})
    for wr in res["workloads"]:
        w, rows = wr["workload"], wr["rows"]
        noise = f"\nothers: {100 * wr['other_cpu']['share']:.0f}% CPU"
        if w["name"] == "growth":
            groups.append(("growth @16" + noise, {k: r["ms_at_16"] for k, r in rows.items() if "ms_at_16" in r}
                           | ({FLOOR: rows[FLOOR]["ms_per_step"]} if FLOOR in rows else {})))
            groups.append((f"growth @{w['new_tokens']}" + noise,
                           {k: r["ms_at_end"] for k, r in rows.items() if "ms_at_end" in r}
                           | ({FLOOR: rows[FLOOR]["ms_per_step"]} if FLOOR in rows else {})))
        else:
            groups.append((w["name"] + noise, {k: r["ms_per_step"] for k, r in rows.items()}))
    labels = [label for label in [*SYSTEMS.values(), BARE, FLOOR] if any(label in g for _, g in groups)]
    if not labels:
        return
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(groups)), 5.5))
    colors = plt.get_cmap("tab10")
    values = [v for _, g in groups for v in g.values() if v and v > 0]
    drawn = set()
    for j, (_, g) in enumerate(groups):  # each group's bars side by side, centred on the group
        present = [label for label in labels if label in g]
        width = 0.85 / len(labels)
        for i, label in enumerate(present):
            x = j + (i - (len(present) - 1) / 2) * width
            ax.bar(x, g[label], width, color=colors(labels.index(label)), edgecolor="white",
                   hatch="//" if label in (BARE, FLOOR) else None, label=None if label in drawn else label)
            drawn.add(label)
            ax.annotate(f"{g[label]:.1f}", (x, g[label]), ha="center", va="bottom", fontsize=6, rotation=90,
                        xytext=(0, 2), textcoords="offset points")
    if values and max(values) / min(values) > 30:
        ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), [name for name, _ in groups])
    ax.set_ylabel("ms per step (median), lower is better")
    m = res["machine"]
    oc = sum(wr["other_cpu"]["seconds"] for wr in res["workloads"])
    share = max((wr["other_cpu"]["share"] for wr in res["workloads"]), default=0.0)
    ax.set_title(f"t5-small-shaped model, CPU: {m['cpu']} ({m['logical cpus']} logical CPUs), "
                 f"{m['threads used']} threads everywhere\nmedian of {res['settings']['repeats']} interleaved runs; "
                 f"other processes used {oc:.0f} CPU-s during the run"
                 + (f" (up to {100 * share:.0f}% of the machine: NOISY)" if share >= 0.05 else ""), fontsize=9)
    ax.legend(fontsize=8, ncols=2)
    ax.margins(y=0.12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


# ---- main ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache for the checkpoint and artifacts")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per system (default 5; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every system (default 2)")
    parser.add_argument("--workloads", nargs="+", choices=list(cs.WORKLOADS), default=list(cs.WORKLOADS),
                        help="workloads to run (default: all)")
    parser.add_argument("--systems", nargs="+", choices=[*SYSTEMS, "floor"], default=[*SYSTEMS, "floor"],
                        help="systems to run (default: all whose packages are installed)")
    parser.add_argument("--growth-tokens", type=int, default=None,
                        help=f"new tokens of the growth workload (default {cs.GROWTH_TOKENS}; 64 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run: 1 repeat after the warm-up, growth to 64 tokens")
    parser.add_argument("--passive-omp", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE for every system (OpenMP threads sleep instead of spinning: "
                             "CTranslate2 and PyTorch degrade badly on a CPU shared with other work without it)")
    parser.add_argument("--chart", type=Path, default=Path(__file__).resolve().parent / "compare.png",
                        help="PNG chart of ms/step (default benchmarks/compare.png)")
    parser.add_argument("--json", type=Path, help="also write everything to this JSON file")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    growth_tokens = args.growth_tokens or (64 if args.quick else cs.GROWTH_TOKENS)
    workloads = [cs.WORKLOADS[n] for n in args.workloads]
    workloads = [replace(w, new_tokens=growth_tokens) if w.name == "growth" else w for w in workloads]
    started = time.perf_counter()

    # Every library's thread pool gets ``threads``: OpenMP (CTranslate2, PyTorch), OpenBLAS (numpy: the
    # floor); ONNX Runtime and torch are also told explicitly. Workers inherit this environment.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    if args.passive_omp:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    probe = OtherCPU([])
    time.sleep(1.0)
    load_before = probe.read()["share"]
    say(f"other processes are using {100 * load_before:.0f}% of the machine right now"
        + (": the timings will be noisy" if load_before >= 0.05 else ""))

    ctx = multiprocessing.get_context("spawn")
    wanted = [n for n in args.systems if n != "floor"]
    skipped = {n: f"{', '.join(m)} not installed" for n in wanted if (m := _missing(NEEDS[n]))}
    names = [n for n in wanted if n not in skipped]
    if "growth" in args.workloads and "t5ort-fp32" not in names:
        say("note: the growth workload needs t5ort-fp32; it will have only the floor")
    skipped |= prepare_artifacts(ctx, names, args.workdir)
    names = [n for n in names if n not in skipped]

    workers: dict[str, Worker] = {}
    for name in names + (["floor"] if "floor" in args.systems else []):
        say(f"loading {name}")
        try:
            workers[name] = Worker(ctx, name, args.workdir, args.threads)
        except RuntimeError as exc:
            skipped[name] = "failed to load: " + str(exc).strip().splitlines()[-1]
            say(f"{name}: failed to load:\n{exc}")
    for name, why in skipped.items():
        say(f"skipping {SYSTEMS.get(name, name)}: {why}")

    results = []
    for w in workloads:
        results.append(summarize(w, run_workload(w, workers, repeats)))
        say(f"{w.name}: other processes used {results[-1]['other_cpu']['seconds']:.1f} CPU-s")

    systems = {}
    for name, wk in workers.items():
        end = wk.stop()
        s = {**wk.info, **end}
        if name != "floor":
            files = cs.artifact_files(name, args.workdir)
            s["artifact"] = str(cs.artifact_dir(name, args.workdir).relative_to(args.workdir.parent)) \
                if args.workdir.parent in cs.artifact_dir(name, args.workdir).parents else \
                str(cs.artifact_dir(name, args.workdir))
            if name == "optimum":
                s["artifact"] += " (encoder + merged decoder)"
            s["artifact_mb"] = sum(f.stat().st_size for f in files) / 1e6
        systems[name] = s

    blas = systems.get("floor", {}).get("openblas", {})
    info = machine(args.threads, **{
        dist: _version(dist) for dist in ("torch", "transformers", "optimum", "optimum-onnx", "ctranslate2", "numpy")
    })
    info.update({
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "numpy BLAS (floor)": f"{blas.get('library', '?')}, kernel {blas.get('kernel', '?')}, "
                              f"{blas.get('threads', '?')} threads" if blas else "floor not run",
        "OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE": f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')} / "
                                                f"{os.environ.get('OPENBLAS_L2_SIZE', 'unset')} (left as found)",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset (library defaults)"),
        "repeats": str(repeats),
        "other processes' share of the machine just before the run": f"{100 * load_before:.0f}%",
        "CPU time of other processes (all workloads)":
            f"{sum(r['other_cpu']['seconds'] for r in results):.1f} s",
        "run time": f"{time.perf_counter() - started:.0f} s",
    })
    res = {"machine": info, "settings": {"repeats": repeats, "threads": args.threads, "quick": args.quick,
                                         "growth_tokens": growth_tokens, "pause_s": PAUSE_S},
           "skipped": skipped, "systems": systems, "workloads": results}
    print(report(res))
    chart(res, args.chart)
    say(f"chart written to {args.chart}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=_json_default) + "\n")
        say(f"results written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
