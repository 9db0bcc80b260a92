"""The UMT5 outlier: is t5ort's extra distance to float64 on UMT5 in the export, or in the checkpoint?

    python benchmarks/umt5_outlier.py [--seeds 0 1 2 ...] [--workdir DIR]

Three measurements, on the ill-conditioned recipe of ``tests/variants.py``
(``build_ill_conditioned``: T5 v1.1-like activations, 32 buckets up to distance 128):

1. bucket rounding: the relative-position bucket indices every encoder layer of a UMT5
   export computes, against transformers' ``_relative_position_bucket``, for all
   query/key pairs of a 60-token input (the log buckets' boundaries at distances 16
   and 32 are where a float32 rounding difference would flip a bucket);
2. the same function: a UMT5 checkpoint whose per-layer bias tables all equal the T5
   checkpoint's shared one (same weights otherwise) computes T5's function; exported,
   does it get T5's figures?
3. a seed sweep of T5 and UMT5, on the export gate's inputs (2 rows, 8 steps) and on a
   batch of 4 rows of 7-40 tokens (12 steps): t5ort's and PyTorch fp32's distance to
   float64 and their ratio, against transformers' plain ``.double()`` model and against
   the gate's reference (RMSNorm variance and softmax kept in float64).

Numbers, not timings: other processes on the machine do not change them. Progress on
stderr, results on stdout.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from variants import build_ill_conditioned, load_torch  # noqa: E402

import t5ort  # noqa: E402
from t5ort.export import parity  # noqa: E402


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def batch(vocab_size: int, lengths: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return parity.check_inputs(vocab_size, seed, lengths)


INPUTS = {"gate inputs (7, 13 tokens; 8 steps)": ((7, 13), 8), "4 rows of 7-40 tokens (12 steps)": ((7, 13, 21, 40), 12)}


def figures(export: Path, checkpoint: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """{inputs: {reference: (t5ort vs float64, fp32 vs float64)}}."""
    import torch

    rt = t5ort.load(export)
    model, _ = load_torch(checkpoint)
    model64 = copy.deepcopy(model).double()
    out = {}
    for name, (lengths, steps) in INPUTS.items():
        ids, mask = batch(rt.vocab_size, lengths)
        res = rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps)
        dec = res.sequences[:, :-1]
        fp32 = parity.torch_logits(model, ids, mask, dec)
        with torch.no_grad():  # transformers' float64 model as it is: RMSNorm variance and softmax in float32
            plain = model64(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                            decoder_input_ids=torch.from_numpy(dec)).logits.numpy()
        kept = parity.torch_logits(model64, ids, mask, dec)  # the gate's reference (keep_float64)
        out[name] = {ref: (float(np.abs(res.logits - f64).max()), float(np.abs(fp32 - f64).max()))
                     for ref, f64 in (("transformers .double()", plain), ("gate reference", kept))}
    return out


def bucket_check(export: Path, checkpoint: Path, length: int = 60) -> tuple[int, int]:
    """(pairs compared, pairs that differ) over every encoder layer's bucket indices."""
    import onnx
    import onnxruntime as ort
    import torch

    model, _ = load_torch(checkpoint)
    graph = onnx.load(str(export / "encoder_model.onnx"))
    gathers = [n for n in graph.graph.node if n.op_type == "Gather" and "relative_attention_bias" in n.input[0]]
    for node in gathers:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(node.input[1], onnx.TensorProto.INT64, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.full((1, length), 5, dtype=np.int64)
    buckets = session.run([n.input[1] for n in gathers], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    compared = differ = 0
    for layer, got in enumerate(buckets):
        expected = model.encoder.block[layer].layer[0].SelfAttention._relative_position_bucket(relative).numpy()
        compared += expected.size
        differ += int((got.reshape(expected.shape) != expected).sum())
    return compared, differ


def same_function(workdir: Path) -> tuple[Path, Path]:
    """The T5 ill-conditioned checkpoint, and a UMT5 one computing its function (all bias tables = T5's)."""
    import torch
    import transformers

    t5_dir, umt5_dir = workdir / "same-t5", workdir / "same-umt5"
    build_ill_conditioned(t5_dir / "checkpoint")
    t5, tokenizer = load_torch(t5_dir / "checkpoint")
    keys = set(transformers.UMT5Config().to_dict()) - {"model_type", "architectures", "transformers_version"}
    config = transformers.UMT5Config(**{k: v for k, v in t5.config.to_dict().items() if k in keys})
    umt5 = transformers.UMT5ForConditionalGeneration(config).eval()
    umt5.load_state_dict(t5.state_dict(), strict=False)  # missing: the bias tables of layers 1..
    with torch.no_grad():
        for stack in ("encoder", "decoder"):
            table = getattr(t5, stack).block[0].layer[0].SelfAttention.relative_attention_bias.weight
            for block in getattr(umt5, stack).block:
                block.layer[0].SelfAttention.relative_attention_bias.weight.copy_(table)
    umt5.save_pretrained(umt5_dir / "checkpoint")
    tokenizer.save_pretrained(umt5_dir / "checkpoint")
    for d in (t5_dir, umt5_dir):
        t5ort.export(d / "checkpoint", d / "onnx", force=True, atol=1.0)
    return t5_dir, umt5_dir


def table(rows: list[tuple[str, dict]]) -> str:
    head = "| checkpoint | inputs | reference | t5ort vs float64 | PyTorch fp32 vs float64 | ratio |"
    lines = [head, "|---|---|---|---|---|---|"]
    for name, figs in rows:
        for inputs, refs in figs.items():
            for ref, (ours, theirs) in refs.items():
                lines.append(f"| {name} | {inputs} | {ref} | {ours:.2e} | {theirs:.2e} | {ours / theirs:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # the tracer's and optimum's warnings
    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="t5ort-umt5-") as tmp:
        workdir = args.workdir or Path(tmp)
        say("1. bucket rounding")
        umt5_dir = workdir / "umt5-seed1"
        build_ill_conditioned(umt5_dir / "checkpoint", model_type="umt5")
        t5ort.export(umt5_dir / "checkpoint", umt5_dir / "onnx", force=True, atol=1.0)
        compared, differ = bucket_check(umt5_dir / "onnx", umt5_dir / "checkpoint")
        print(f"1. bucket indices, every encoder layer of the UMT5 export, 60-token input: {differ} of "
              f"{compared} query/key pairs differ from transformers' _relative_position_bucket\n")
        say("2. the same function as T5 and as UMT5")
        t5_dir, same_dir = same_function(workdir)
        print("2. one function, exported as T5 and as UMT5 (all UMT5 bias tables = T5's shared one):\n")
        print(table([("T5", figures(t5_dir / "onnx", t5_dir / "checkpoint")),
                     ("UMT5, T5's bias in every layer", figures(same_dir / "onnx", same_dir / "checkpoint"))]))
        print()
        rows = []
        for model_type in ("t5", "umt5"):
            for seed in args.seeds:
                say(f"3. {model_type} seed {seed}")
                d = workdir / f"{model_type}-{seed}"
                build_ill_conditioned(d / "checkpoint", model_type=model_type, seed=seed)
                t5ort.export(d / "checkpoint", d / "onnx", force=True, atol=1.0)  # the figures, not the verdict
                rows.append((f"{model_type} seed {seed}", figures(d / "onnx", d / "checkpoint")))
        print("3. seed sweep of the ill-conditioned recipe:\n")
        print(table(rows))
        ratios = {(name.split()[0], inputs, ref): [] for name, figs in rows for inputs, refs in figs.items()
                  for ref in refs}
        for name, figs in rows:
            for inputs, refs in figs.items():
                for ref, (ours, theirs) in refs.items():
                    ratios[(name.split()[0], inputs, ref)].append(ours / theirs)
        print("\n| model | inputs | reference | median ratio | max ratio |\n|---|---|---|---|---|")
        for (model, inputs, ref), values in ratios.items():
            print(f"| {model} | {inputs} | {ref} | {np.median(values):.2f} | {max(values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
