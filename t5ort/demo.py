"""``t5ort demo``: the bundled model, translating English number words to German, step by step.

The model (a small T5 v1.1 trained by ``t5ort/training/train_numbers.py``) ships in
the package as a PyTorch checkpoint and its fp32 and int8 exports, so the demo
needs only the runtime. Where the ``[export]`` extra is installed it also
re-exports the checkpoint and prints the parity figures against PyTorch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ASSETS = Path(__file__).parent / "assets" / "numbers"
PREFIX = "translate English to German: "
DEFAULT_NUMBERS = ["five hundred thousand one", "three hundred forty-two", "seventy-one thousand nine", "nineteen"]
LOW_MARGIN = 0.5  # best minus runner-up probability below this: the step is flagged as unsure


def bundled(kind: str = "onnx") -> Path:
    """Path of the bundled model: ``onnx`` (fp32), ``onnx-int8`` or ``checkpoint`` (PyTorch)."""
    path = ASSETS / kind
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: the bundled model is missing from this installation; reinstall t5ort.")
    return path


def row_steps(runtime, result, row: int) -> int:
    """How many steps row ``row`` really took: up to and including its EOS (the rest is padding)."""
    new = result.sequences[row, 1:]
    ends = np.flatnonzero(np.isin(new, runtime.manifest.special_tokens.eos_token_id))
    return int(ends[0]) + 1 if ends.size else len(new)


def step_table(runtime, result, row: int, k: int) -> str:
    """Per-step table of one row: chosen token, its probability, the k most likely tokens, unsure steps flagged."""
    ids, probs = result.top_alternatives(k)
    margin = result.margin()
    chosen_p = np.exp(result.token_logprobs[row])
    name = runtime.tokenizer.token_string if runtime.tokenizer else str
    lines = [f"{'step':>4}  {'token':<14} {'p':>6}   top-{k}"]
    for step in range(row_steps(runtime, result, row)):
        token = int(result.sequences[row, step + 1])
        alts = "  ".join(f"{name(int(t))!r} {p:.3f}" for t, p in zip(ids[row, step], probs[row, step]))
        flag = "  <- unsure" if margin[row, step] < LOW_MARGIN else ""
        lines.append(f"{step:>4}  {repr(name(token)):<14} {chosen_p[step]:6.3f}   {alts}{flag}")
    return "\n".join(lines)


def plot_probabilities(runtime, result, row: int, k: int, path: Path) -> None:
    """A heatmap of the top-k token probabilities of every step of one row, tokens written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids, probs = result.top_alternatives(k)
    steps = row_steps(runtime, result, row)
    fig, ax = plt.subplots(figsize=(1.1 * steps + 2, 0.55 * k + 1.6))
    image = ax.imshow(probs[row, :steps].T, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for step in range(steps):
        for rank in range(k):
            p = probs[row, step, rank]
            ax.text(step, rank, f"{runtime.tokenizer.token_string(int(ids[row, step, rank]))}\n{p:.2f}",
                    ha="center", va="center", fontsize=7, color="black" if p > 0.6 else "white")
    ax.set_xticks(range(steps))
    ax.set_yticks(range(k), [f"#{r + 1}" for r in range(k)])
    ax.set_xlabel("decoding step")
    ax.set_title(f"{result.texts[row]!r}: top-{k} next-token probabilities per step")
    fig.colorbar(image, ax=ax, label="probability")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_against_pytorch(sources: list[str], progress: Callable[[str], None]) -> str:
    """Re-export the bundled checkpoint and compare greedy decoding with transformers'; one summary line."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    import t5ort

    checkpoint = bundled("checkpoint")
    with tempfile.TemporaryDirectory(prefix="t5ort-demo-") as tmp:
        manifest = t5ort.export(checkpoint, Path(tmp) / "onnx", progress=progress)
        runtime = t5ort.load(Path(tmp) / "onnx")
        result = runtime.generate(sources, max_new_tokens=32)
    model = T5ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    enc = AutoTokenizer.from_pretrained(checkpoint)(sources, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=32, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    logits = torch.stack(out.logits, dim=1).numpy()
    same = out.sequences.shape == result.sequences.shape and bool((out.sequences.numpy() == result.sequences).all())
    diff = float(np.abs(result.logits - logits).max()) if same else float("nan")
    return (f"re-exported from the PyTorch checkpoint: export check max |logit diff| "
            f"{manifest.parity['max_abs_diff']:.2e}; greedy vs transformers on {len(sources)} inputs: "
            f"sequences equal: {'yes' if same else 'NO'}, max |raw logit diff| {diff:.2e}")


def run_demo(numbers: Sequence[str], *, int8: bool, plot: Path | None, top: int,
             progress: Callable[[str], None]) -> int:
    import t5ort

    numbers = list(numbers) or DEFAULT_NUMBERS
    sources = [PREFIX + n for n in numbers]
    runtime = t5ort.load(bundled("onnx-int8" if int8 else "onnx"))
    result = runtime.generate(sources, max_new_tokens=32)
    print(f"bundled model: {runtime.directory.name} ({'int8' if int8 else 'fp32'} weights), greedy decoding\n")
    for row, (number, text) in enumerate(zip(numbers, result.texts)):
        print(f"{number!r} -> {text!r}")
        print(step_table(runtime, result, row, top))
        print()
    if plot is not None:
        plot_probabilities(runtime, result, 0, top, plot)
        print(f"wrote {plot}")
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        print("(install the [export] extra to re-export the checkpoint and check it against PyTorch)")
        return 0
    progress("re-exporting the bundled checkpoint and checking it against PyTorch")
    print(check_against_pytorch(sources, progress))
    return 0
