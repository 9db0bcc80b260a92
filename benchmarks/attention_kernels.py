"""Would per-row cache lengths pay? One decoding step's self-attention over an in-place cache, two onnxruntime
kernels side by side: ``MultiHeadAttention`` (what t5ort's decoder graph runs: every row reads the cache up to
one shared past length, the columns a row does not own masked by the bias) and ``GroupQueryAttention`` (each
row reads only its own length, ``seqlens_k``; the new key/value written at that row's own column).

    python benchmarks/attention_kernels.py [--rows 16] [--heads 8] [--d-kv 64] [--widths 32 96 192 288]
                                           [--threads 2] [--repeats 300] [--json FILE] [--quick]

Per width W (the cache's used columns, the oldest row's history) two layouts of the rows' own lengths:
``equal`` (every row at W: a batch that started together, beams) and ``spread`` (lengths evenly from 1 to W:
an in-flight batch whose rows joined at different steps). MultiHeadAttention's time is the same for both
(it reads W columns of every row). Both kernels are first checked against numpy (the ``spread`` layout, an
additive bias per row as T5's position bias needs). Microseconds per call of one layer's kernel; a decoder
step runs one per layer.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def graph(kind: str, heads: int, d_kv: int) -> bytes:
    from onnx import TensorProto, helper

    hidden = heads * d_kv

    def value(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    x = [value(n, TensorProto.FLOAT, ["B", 1, hidden]) for n in ("q", "k", "v")]
    cache = [value(n, TensorProto.FLOAT, ["B", heads, "C", d_kv]) for n in ("past_key", "past_value")]
    bias = value("bias", TensorProto.FLOAT, ["B", heads, 1, "T"])
    outputs = [value("out", TensorProto.FLOAT, ["B", 1, hidden]),
               *(value(n, TensorProto.FLOAT, ["B", heads, "C", d_kv]) for n in ("present_key", "present_value"))]
    if kind == "mha":
        inputs = [*x, bias, *cache, value("past_length", TensorProto.INT32, [1])]
        node = helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "", "bias", "past_key", "past_value",
                                                       "past_length"], ["out", "present_key", "present_value"],
                                domain="com.microsoft", num_heads=heads, scale=1.0)
    else:
        inputs = [*x, *cache, value("seqlens_k", TensorProto.INT32, ["B"]), value("total", TensorProto.INT32, [1]),
                  bias]
        node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "past_key", "past_value", "seqlens_k",
                                                        "total", "", "", "", "bias"],
                                ["out", "present_key", "present_value"], domain="com.microsoft", num_heads=heads,
                                kv_num_heads=heads, scale=1.0)
    model = helper.make_model(helper.make_graph([node], kind, inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


class Kernel:
    """One kernel's session and a binding of one step: the cache bound in place, as t5ort binds it."""

    def __init__(self, kind: str, heads: int, d_kv: int, threads: int):
        import onnxruntime as ort

        self.ort, self.kind = ort, kind
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(graph(kind, heads, d_kv), options, providers=["CPUExecutionProvider"])

    def bind(self, q, k, v, cache_key, cache_value, lengths, bias):
        """``lengths`` int [B]: each row's cached positions (MultiHeadAttention: all at their maximum, the
        bias masks the rest); ``bias`` [B, H, 1, max + 1]."""
        binding = self.session.io_binding()
        width = int(lengths.max())
        inputs = {"q": q, "k": k, "v": v, "bias": bias}
        if self.kind == "mha":
            inputs["past_length"] = np.array([width], np.int32)
        else:
            inputs["seqlens_k"] = lengths.astype(np.int32)  # = the new position of each row
            inputs["total"] = np.array([width + 1], np.int32)
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name, present, array in (("past_key", "present_key", cache_key), ("past_value", "present_value", cache_value)):
            binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(array))
            binding.bind_output(present, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        binding.bind_output("out")
        return binding

    def run(self, binding) -> np.ndarray:
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[-1].numpy()


def reference(q, k, v, cache_key, cache_value, lengths, bias, heads, d_kv) -> np.ndarray:
    """Each row attends to its own cached positions and its new one, T5's way (no scaling), in float64."""
    out = np.empty(q.shape, np.float64)
    for row, length in enumerate(lengths):
        keys = np.concatenate([cache_key[row, :, :length], k[row, 0].reshape(heads, 1, d_kv)], 1)
        values = np.concatenate([cache_value[row, :, :length], v[row, 0].reshape(heads, 1, d_kv)], 1)
        scores = np.einsum("hd,htd->ht", q[row, 0].reshape(heads, d_kv), keys) + bias[row, :, 0, :length + 1]
        p = np.exp(scores - scores.max(-1, keepdims=True))
        out[row, 0] = np.einsum("ht,htd->hd", p / p.sum(-1, keepdims=True), values).reshape(-1)
    return out


def layouts(rows: int, width: int) -> dict[str, np.ndarray]:
    return {"equal": np.full(rows, width), "spread": np.linspace(1, width, rows).round().astype(np.int64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d-kv", type=int, default=64)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 96, 192, 288])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="a smoke run: two small widths, 20 repeats")
    args = parser.parse_args()
    if args.quick:
        args.widths, args.repeats = [16, 48], 20
    import onnxruntime as ort

    rows, heads, d_kv = args.rows, args.heads, args.d_kv
    capacity = max(args.widths) + 8
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((rows, 1, heads * d_kv)).astype(np.float32) for _ in range(3))
    cache = [rng.standard_normal((rows, heads, capacity, d_kv)).astype(np.float32) for _ in range(2)]
    kernels = {kind: Kernel(kind, heads, d_kv, args.threads) for kind in ("mha", "gqa")}

    # Correct first: the spread layout at the first width, each row's own bias (MultiHeadAttention masks the
    # columns past a row's length in the bias, as t5ort's graph does).
    lengths = layouts(rows, args.widths[0])["spread"]
    width = int(lengths.max())
    bias = (rng.standard_normal((rows, heads, 1, width + 1)) * 0.5).astype(np.float32)
    expected = reference(q, k, v, *cache, lengths, bias, heads, d_kv)
    errors = {}
    for kind, kernel in kernels.items():
        b = bias.copy()
        if kind == "mha":  # row r owns columns 0 .. lengths[r] - 1 and its new one at column ``width``
            shifted = np.full_like(b, np.finfo(np.float32).min)
            for r, n in enumerate(lengths):
                shifted[r, :, 0, :n], shifted[r, :, 0, width] = b[r, :, 0, :n], b[r, :, 0, n]
            b = shifted
        got = kernel.run(kernel.bind(q, k, v, *(c.copy() for c in cache), lengths, b))
        errors[kind] = float(np.abs(got - expected).max())
        if errors[kind] > 1e-4:
            raise SystemExit(f"{kind}: differs from numpy by {errors[kind]:.2e}")

    def time_call(kind: str, lengths: np.ndarray) -> float:
        kernel = kernels[kind]
        width = int(lengths.max())
        binding = kernel.bind(q, k, v, *(c.copy() for c in cache), lengths,
                              np.zeros((rows, heads, 1, width + 1), np.float32))
        for _ in range(5):
            kernel.session.run_with_iobinding(binding)
        start = time.perf_counter()
        for _ in range(args.repeats):
            kernel.session.run_with_iobinding(binding)
        return (time.perf_counter() - start) / args.repeats * 1e6

    print(f"onnxruntime {ort.__version__}, {args.threads} threads, {rows} rows, {heads} heads, d_kv {d_kv}; "
          f"max error against numpy: MultiHeadAttention {errors['mha']:.1e}, GroupQueryAttention {errors['gqa']:.1e}\n")
    print("| cache width | MultiHeadAttention, us | GroupQueryAttention, rows equal, us | "
          "GroupQueryAttention, rows spread 1..W, us | spread / MHA |\n|---|---|---|---|---|")
    figures = []
    for width in args.widths:
        lay = layouts(rows, width)
        mha, equal, spread = time_call("mha", lay["equal"]), time_call("gqa", lay["equal"]), time_call("gqa", lay["spread"])
        figures.append({"width": width, "mha_us": mha, "gqa_equal_us": equal, "gqa_spread_us": spread})
        print(f"| {width} | {mha:.0f} | {equal:.0f} | {spread:.0f} | {spread / mha:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "threads": args.threads, "rows": rows, "heads": heads,
                       "d_kv": d_kv, "repeats": args.repeats, "max_error": errors, "figures": figures}, f, indent=1)


if __name__ == "__main__":
    main()
