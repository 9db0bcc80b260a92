"""Deliberately broken copies of a t5ort export, for the gate and `t5ort check` tests.

Each breaker rewrites the graphs of an export directory in place (a copy the caller made)
the way a buggy exporter would, then :func:`reseal` records the new checksums in
``t5ort.json``, so the runtime loads the broken graphs and only the parity check can tell:

- ``bucket``: every relative-position bucket shifted by one (clipped to the last bucket);
- ``scale``: the attention scores scaled by d_kv**-0.5, as if T5 scaled like BERT;
- ``epsilon``: every RMSNorm's epsilon 1e-6 -> ``EPSILON`` (measured: the smallest power of ten
  the gate catches on both test checkpoints);
- ``weight``: one weight matrix (the decoder's lm_head) with every element perturbed by
  1e-3 relative (seeded random signs).
"""

from __future__ import annotations

import re

import json
from pathlib import Path

import numpy as np

ENCODER, DECODER = "encoder_model.onnx", "decoder_model.onnx"
EPSILON = 1e-4
BREAKS = ("bucket", "scale", "epsilon", "weight")


def _load(directory: Path, name: str):
    import onnx

    return onnx.load(str(directory / name))  # with the weights from weights.bin


def _save(model, directory: Path, name: str) -> None:
    import onnx

    onnx.save(model, str(directory / name))  # weights inline; reseal() gathers them into weights.bin again


def _const(name: str, value: np.ndarray):
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def shift_buckets(graph) -> int:
    """Insert ``min(bucket + 1, num_buckets - 1)`` before every relative_attention_bias Gather."""
    from onnx import helper, numpy_helper

    tables = {t.name: numpy_helper.to_array(t).shape[0] for t in graph.initializer if "relative_attention_bias" in t.name}
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in tables:
            stem = f"{node.name}/broken"
            nodes += [_const(f"{stem}/one", np.array(1, np.int64)),
                      _const(f"{stem}/last", np.array(tables[node.input[0]] - 1, np.int64)),
                      helper.make_node("Add", [node.input[1], f"{stem}/one"], [f"{stem}/plus"]),
                      helper.make_node("Min", [f"{stem}/plus", f"{stem}/last"], [f"{stem}/shifted"])]
            node.input[1] = f"{stem}/shifted"
            count += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def scale_scores(graph, scale: float) -> int:
    """Multiply the output of every attention score MatMul (Q K^T) by ``scale``."""
    from onnx import helper

    nodes, count = [], 0
    for node in graph.node:
        nodes.append(node)
        if node.op_type == "MatMul" and re.search(r"/scores(_\d+)?/MatMul$", node.name):
            stem, out = f"{node.name}/broken", node.output[0]
            node.output[0] = f"{stem}/unscaled"
            nodes += [_const(f"{stem}/scale", np.array(scale, np.float32)),
                      helper.make_node("Mul", [f"{stem}/unscaled", f"{stem}/scale"], [out])]
            count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def change_epsilon(graph, epsilon: float) -> int:
    """Set the epsilon constant of every RMSNorm (``layer_norm/Add``'s constant input) to ``epsilon``."""
    from onnx import numpy_helper

    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    count = 0
    for node in graph.node:
        if node.op_type == "Add" and re.search(r"/layer_norm(_\d+)?/", node.name):
            for name in node.input:
                if name in constants:
                    value = constants[name].attribute[0]
                    old = numpy_helper.to_array(value.t)
                    assert old.size == 1 and abs(float(old) - 1e-6) < 1e-9, (node.name, old)
                    value.t.CopyFrom(numpy_helper.from_array(np.array(epsilon, old.dtype).reshape(old.shape)))
                    count += 1
    return count


def perturb_lm_head(graph, relative: float, seed: int = 0) -> int:
    """Perturb every element of the weight of the graph's last MatMul (the lm_head) by ``relative``."""
    from onnx import numpy_helper

    weights = {t.name: t for t in graph.initializer}
    last = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights][-1]
    tensor = weights[last.input[1]]
    w = numpy_helper.to_array(tensor)
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=w.shape)
    tensor.CopyFrom(numpy_helper.from_array((w * (1 + relative * signs)).astype(w.dtype), tensor.name))
    return 1


def poison_logits(directory: Path, token: int, value: float) -> None:
    """Set the decoder's raw logit of ``token`` to ``value`` (NaN, inf, -inf) at every position, before both of
    its readers (the ``logits`` output and the logsumexp), as an overflowing graph would; then reseal."""
    from onnx import helper

    model = _load(directory, DECODER)
    graph = model.graph
    head = next(n for n in graph.node if "logits" in n.output)  # the lm_head MatMul
    head.output[0] = "logits/clean"
    vocab = next(o for o in graph.output if o.name == "logits").type.tensor_type.shape.dim[2].dim_value
    offset = np.zeros(vocab, np.float32)
    offset[token] = value
    nodes = [_const("logits/poison", offset), helper.make_node("Add", ["logits/clean", "logits/poison"], ["logits"])]
    position = list(graph.node).index(head) + 1
    for i, node in enumerate(nodes):
        graph.node.insert(position + i, node)
    _save(model, directory, DECODER)
    reseal(directory)


def break_export(directory: Path, kind: str, d_kv: int) -> None:
    """Apply the breakage ``kind`` (one of BREAKS) to the export in ``directory`` and reseal it."""
    changed = 0
    for name in (ENCODER, DECODER):
        if kind == "weight" and name == ENCODER:
            continue
        model = _load(directory, name)
        if kind == "bucket":
            changed += shift_buckets(model.graph)
        elif kind == "scale":
            changed += scale_scores(model.graph, d_kv ** -0.5)
        elif kind == "epsilon":
            changed += change_epsilon(model.graph, EPSILON)
        elif kind == "weight":
            changed += perturb_lm_head(model.graph, 1e-3)
        else:
            raise ValueError(kind)
        _save(model, directory, name)
    assert changed, f"{kind}: nothing to break in {directory}"
    reseal(directory)


def reseal(directory: Path) -> None:
    """Gather the graphs' weights into weights.bin again and record the new checksums in t5ort.json."""
    from t5ort.export.trace import graph_spec
    from t5ort.export.weights import store_weights, weights_spec

    store_weights(directory, [ENCODER, DECODER])
    path = directory / "t5ort.json"
    manifest = json.loads(path.read_text())
    for role, name in (("encoder", ENCODER), ("decoder", DECODER)):
        manifest["graphs"][role]["sha256"] = graph_spec(directory / name).sha256
    manifest["weights"] = dict(weights_spec(directory).__dict__)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
