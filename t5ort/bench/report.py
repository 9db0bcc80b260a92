"""A :class:`~t5ort.bench.results.BenchResult` as markdown tables, JSON and a chart."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .machine import markdown_table
from .results import BenchResult


def _f(value, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def format_table(result: BenchResult) -> str:
    """The machine, the systems (artifact size, peak RSS) and one table per workload, in markdown: whole-call
    ms/step (encoder included), then the call split into decode ms/step and encoder ms (see
    :class:`~t5ort.bench.results.Measurement`), decode ms/step over the floor of the system's precision
    (with ``floors``), encoder ms per real source token."""
    parts = [markdown_table(["", ""], [[k, str(v)] for k, v in result.machine.items()])]
    if result.skipped:
        parts.append("Skipped: " + "; ".join(f"{k}: {v}" for k, v in result.skipped.items()))
    several = len({s.python for s in result.systems}) > 1  # some peer ran under its own interpreter
    parts.append(markdown_table(
        ["system", "artifact", "size on disk", "load s", "RSS after load", "peak RSS", "versions"]
        + (["python"] if several else []),
        [[s.label, s.artifact, f"{s.artifact_mb:.1f} MB", f"{s.load_seconds:.1f}", f"{s.rss_after_load_mb:.0f} MB",
          f"{s.peak_rss_mb:.0f} MB", ", ".join(f"{k} {v}" for k, v in s.versions.items()) or "-"]
         + ([f"{s.python} ({s.python_version})"] if several else []) for s in result.systems]))
    repeats = result.settings["repeats"]
    for w in result.workloads:
        rows = []
        ref = result.measurement(result.reference, w)
        for s in result.systems:
            m = result.measurement(s.label, w)
            if m is None:
                continue
            lo, hi = m.ms_per_step_range
            floor = s.kind.startswith("floor")
            rows.append([s.label, f"{m.ms_per_step:.2f}", f"{lo:.2f}-{hi:.2f}", _f(m.cpu_ms_per_step),
                         _f(m.decode_ms_per_step), _f(result.floor_ratio(s.label, w), ".2f") + "x" * (not floor),
                         "-" if floor else _f(m.encoder_ms), "-" if floor else _f(m.encoder_ms_per_source_token, ".4f"),
                         f"{m.tokens_per_s:.1f}", _f(m.first_token_ms, ".1f"),
                         f"{m.ms_per_step / ref.ms_per_step:.2f}x",
                         "-" if m.token_agreement is None else f"{100 * m.token_agreement:.1f}%"])
        other = ref.other_cpu_seconds
        sources = ref.source_tokens
        parts.append(f"{w.name}, {w.new_tokens} new tokens per row, {sources} source tokens "
                     f"(other processes used {other:.1f} CPU s meanwhile"
                     + (": the timings shared the CPUs)" if other > 1 else ")"))
        parts.append(markdown_table(
            ["system", f"ms/step (median of {repeats})", "range", "CPU ms/step", "decode ms/step", "/ floor",
             "encoder ms", "encoder ms/source token", "tokens/s", "first token ms",
             f"/ {result.reference}", f"tokens = {result.reference}"], rows))
    return "\n\n".join(parts)


def write_json(result: BenchResult, path: str | Path) -> None:
    """Everything (raw seconds included) to ``path``, written to a temporary name and renamed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result.to_dict(), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot(result: BenchResult, path: str | Path) -> None:
    """A bar chart of ms/step per workload and system (medians, whiskers: fastest to slowest run). Needs
    matplotlib (``pip install t5ort[bench]``)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 't5ort[bench]' (or matplotlib).") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads, labels = result.workloads, [s.label for s in result.systems]
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(workloads) * max(1, len(labels) / 3)), 5.5))
    width = 0.85 / max(1, len(labels))
    colors = plt.get_cmap("tab10")
    values = []
    for i, label in enumerate(labels):
        xs, ys, err = [], [], [[], []]
        for j, w in enumerate(workloads):
            m = result.measurement(label, w)
            if m is None:
                continue
            lo, hi = m.ms_per_step_range
            xs.append(j + (i - (len(labels) - 1) / 2) * width)
            ys.append(m.ms_per_step)
            err[0].append(m.ms_per_step - lo)
            err[1].append(hi - m.ms_per_step)
        values += ys
        ax.bar(xs, ys, width, yerr=np.array(err), capsize=2, color=colors(i % 10), label=label,
               hatch="//" if "bare" in label else ("xx" if label.startswith("floor") else None), edgecolor="white")
        for x, y, above in zip(xs, ys, err[1]):  # the median's label above the slowest run's whisker
            ax.annotate(f"{y:.1f}", (x, y + above), ha="center", va="bottom", fontsize=6, rotation=90,
                        xytext=(0, 2), textcoords="offset points")
    if values and max(values) / max(min(values), 1e-9) > 30:
        ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)), [w.name for w in workloads])
    ax.set_ylabel("ms per step (median), lower is better")
    m = result.machine
    other = sum(x.other_cpu_seconds for x in result.measurements if x.system == result.reference)
    ax.set_title(f"{m['cpu']}, {m['threads used']} threads, {result.settings['max_new_tokens']} new tokens, "
                 f"median of {result.settings['repeats']} interleaved runs\n"
                 f"other processes used {other:.0f} CPU s during the run", fontsize=9)
    ax.legend(fontsize=8, ncols=min(len(labels), 5), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.margins(y=0.12)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
