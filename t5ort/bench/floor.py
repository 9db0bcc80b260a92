"""The floor of a decoder step: one pass over the weights a step reads, as onnxruntime MatMuls.

A T5 decoder step at batch 1 is matrix-vector products over its weights; on a CPU its
time is bounded below by reading them. The floor graph does only that, on weights of
the model's exact shapes (random values): per decoder layer the self-attention q, k, v, o,
the cross-attention q, o (its k, v come from the encoder, once per source) and the
feed-forward wi (wi_0 and wi_1 when gated) and wo, then the lm_head. The MatMuls are
chained as a step's data flows (x -> q, k, v; their sum -> o; -> cross q -> cross o ->
wi -> wo -> the next layer), with one Add or Mul where a step has attention or the gate,
so none of them can be skipped or run ahead. ``rows`` rows at once give the floor of a
step at that batch (x beams).

The int8 floor is the same graph quantized the way ``t5ort export --quantize int8`` quantizes
(``t5ort.export.quantize``: onnxruntime ``quantize_dynamic``, int8 weights, one scale per
tensor). Making the graphs needs ``onnx`` (the ``[export]`` extra); timing them needs
onnxruntime only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import numpy as np

GRAPH = "floor.onnx"
SPEC_FILE = "floor.json"
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class StepShape:
    """What a decoder step reads, from the model's geometry."""

    d_model: int
    inner: int  # num_heads * d_kv
    d_ff: int
    layers: int  # decoder layers
    gated: bool  # wi_0 and wi_1 (gated-gelu) or one wi (relu)
    vocab_size: int

    @classmethod
    def of(cls, geometry) -> StepShape:
        """From a manifest's ``Geometry``, a checkpoint's config.json dict or a ``t5ort.bench.shapes`` dict."""
        g = asdict(geometry) if is_dataclass(geometry) else dict(geometry)
        return cls(d_model=g["d_model"], inner=g["num_heads"] * g["d_kv"], d_ff=g["d_ff"],
                   layers=g.get("num_decoder_layers") or g["num_layers"],
                   gated=str(g.get("feed_forward_proj", "relu")).startswith("gated"), vocab_size=g["vocab_size"])

    def weights(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of every weight a step reads, in the order a step reads them."""
        d, inner, ff = self.d_model, self.inner, self.d_ff
        out = []
        for i in range(self.layers):
            out += [(f"{i}.self.{n}", d, inner) for n in "qkv"] + [(f"{i}.self.o", inner, d)]
            out += [(f"{i}.cross.q", d, inner), (f"{i}.cross.o", inner, d)]
            out += [(f"{i}.ff.wi_0", d, ff), (f"{i}.ff.wi_1", d, ff)] if self.gated else [(f"{i}.ff.wi", d, ff)]
            out += [(f"{i}.ff.wo", ff, d)]
        return out + [("lm_head", d, self.vocab_size)]

    @property
    def parameters(self) -> int:
        return sum(a * b for _, a, b in self.weights())

    @property
    def key(self) -> str:
        """A short name for this shape's cached graphs."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"floor-{self.d_model}x{self.layers}-{digest}"


def graph_dir(shape: StepShape, work_dir: Path, precision: str) -> Path:
    return Path(work_dir) / shape.key / precision


def ready(shape: StepShape, work_dir: Path, precision: str) -> bool:
    d = graph_dir(shape, work_dir, precision)
    spec = d / SPEC_FILE
    return (d / GRAPH).is_file() and spec.is_file() and json.loads(spec.read_text()) == asdict(shape)


def _build_fp32(shape: StepShape, path: Path, seed: int) -> None:
    """The chained MatMul graph: input x [rows, d_model], output logits [rows, vocab]; weights beside it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def matmul(x: str, name: str, n_in: int, n_out: int) -> str:
        w = (rng.standard_normal((n_in, n_out), dtype=np.float32) * n_in ** -0.5)
        inits.append(numpy_helper.from_array(w, f"w.{name}"))
        nodes.append(helper.make_node("MatMul", [x, f"w.{name}"], [name], name=f"MatMul.{name}"))
        return name

    def op(kind: str, a: str, b: str, out: str) -> str:
        nodes.append(helper.make_node(kind, [a, b], [out], name=f"{kind}.{out}"))
        return out

    d, inner, ff = shape.d_model, shape.inner, shape.d_ff
    x = "x"
    for i in range(shape.layers):
        q, k, v = (matmul(x, f"{i}.self.{n}", d, inner) for n in "qkv")
        attention = op("Add", op("Add", q, k, f"{i}.self.qk"), v, f"{i}.self.qkv")  # [rows, inner]
        y = matmul(attention, f"{i}.self.o", inner, d)
        y = matmul(matmul(y, f"{i}.cross.q", d, inner), f"{i}.cross.o", inner, d)
        if shape.gated:
            h = op("Mul", matmul(y, f"{i}.ff.wi_0", d, ff), matmul(y, f"{i}.ff.wi_1", d, ff), f"{i}.ff.h")
        else:
            h = matmul(y, f"{i}.ff.wi", d, ff)
        x = matmul(h, f"{i}.ff.wo", ff, d)  # [rows, d_model]
    matmul(x, "lm_head", d, shape.vocab_size)
    graph = helper.make_graph(
        nodes, "floor", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", d])],
        [helper.make_tensor_value_info("lm_head", TensorProto.FLOAT, ["rows", shape.vocab_size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)


def build(shape: StepShape, work_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Make the fp32 and int8 floor graphs of ``shape`` in ``work_dir`` (kept while their spec matches; each
    written to a temporary name and renamed); {precision: directory}."""
    from ..export.quantize import _int8_convert  # exactly as --quantize int8

    out = {}
    for precision in PRECISIONS:
        d = graph_dir(shape, work_dir, precision)
        out[precision] = d
        if ready(shape, work_dir, precision):
            continue
        tmp = d.with_name(d.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if precision == "fp32":
            _build_fp32(shape, tmp / GRAPH, seed)
        else:
            _int8_convert(out["fp32"] / GRAPH, tmp / GRAPH)
        (tmp / SPEC_FILE).write_text(json.dumps(asdict(shape)))
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
    return out


class Floor:
    """A floor graph in an onnxruntime session with t5ort's session options: ``step(rows)`` runs it once."""

    def __init__(self, directory: Path, threads: int):
        import onnxruntime as ort

        from ..runtime.graphs import session_options

        self.session = ort.InferenceSession(str(Path(directory) / GRAPH), session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.d_model = self.session.get_inputs()[0].shape[1]
        self._inputs: dict[int, np.ndarray] = {}

    def step(self, rows: int = 1) -> None:
        x = self._inputs.get(rows)
        if x is None:
            x = self._inputs[rows] = np.random.default_rng(rows).standard_normal((rows, self.d_model), np.float32)
        self.session.run(None, {"x": x})


def measure(directory: Path, threads: int, rows: int = 1, runs: int = 50, warmup: int = 5) -> float:
    """Median ms of ``runs`` passes of the floor graph in ``directory`` (after ``warmup`` passes), in this
    process: for a quick look; ``t5ort.bench.run(floors=True)`` times it in a worker of its own, interleaved."""
    floor = Floor(directory, threads)
    for _ in range(warmup):
        floor.step(rows)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        floor.step(rows)
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds)
