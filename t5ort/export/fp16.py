"""``--dtype fp16``: half-precision graphs for the CUDA provider, with T5's fp16 overflow kept out.

T5 v1.1-style models (Flan-T5, mT5...) overflow float16 (65504) in the residual
stream: the feed-forward output and the residual additions grow past it, and
transformers' PyTorch T5 clamps inf back in fp16. Here those nodes never run in
fp16 at all: every residual ``Add``, every RMSNorm (``layer_norm`` and
``final_layer_norm``) and every feed-forward output projection (``wo``) stay in
float32, with casts at their borders (onnxruntime's ``convert_float_to_float16``
with a node block list). Everything else (attention, the feed-forward input
projections, embeddings, lm_head) runs in float16, and the self-attention cache
and cross-attention keys/values are float16 tensors; the logits stay float32 (the
runtime's contract). The caller checks the result against PyTorch fp32 with a
stated, looser tolerance (FP16_ATOL, FP16_REL_TOL).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ..runtime.manifest import Manifest

FP16_ATOL = 2e-2
FP16_REL_TOL = 1e-2
_FP32_NODES = re.compile(r"/(residual|layer_norm|ff_out|logsumexp)(_\d+)?/")  # modules.Scope's names
METHOD = ("onnxruntime convert_float_to_float16; residual adds, RMSNorms and feed-forward output projections "
          "(wo) kept in float32; float32 logits, float16 caches")


def fp32_nodes(graph) -> list[str]:
    """Names of the nodes that must stay float32: residual adds, RMSNorms, feed-forward outputs."""
    return [node.name for node in graph.node if _FP32_NODES.search(node.name)]


def to_fp16(staging: Path, manifest: Manifest, torch_model, steps: int) -> Manifest:
    """Replace the fp32 graphs in ``staging`` by fp16 ones checked against PyTorch fp32 (FP16_ATOL, FP16_REL_TOL)."""
    from .parity import check_parity
    from .quantize import replace_graphs, rewrite_graphs

    def convert(src: Path, dst: Path) -> None:
        io = manifest.decoder_io
        convert_graph(src, dst, keep_float32=[io.logits, io.logsumexp] if src.name == manifest.decoder.file else [])

    half, work = rewrite_graphs(staging, manifest, convert, "fp16")
    parity = check_parity(torch_model, work, steps=steps, atol=FP16_ATOL, rel_tol=FP16_REL_TOL)
    half = Manifest.from_dict({**half.to_dict(), "quantization": {"weights": "float16", "method": METHOD,
                                                                 "parity_fp16": parity}})
    replace_graphs(work, staging, manifest)
    return half


def convert_graph(src: Path, dst: Path, keep_float32: list[str]) -> None:
    """Write the graph at ``src`` (weights loaded from beside it) as float16 to ``dst``.

    ``keep_float32``: graph inputs/outputs that keep their float32 type.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    blocked = fp32_nodes(model.graph)
    if not blocked:
        raise ValueError(f"{src}: found no residual Add / layer_norm / wo nodes to keep in float32; "
                         "the graph does not look like t5ort's T5 export.")
    half = convert_float_to_float16(model, keep_io_types=keep_float32, node_block_list=blocked)
    drop_fp16_round_trips(half.graph)
    large = half.ByteSize() > 1 << 30  # protobuf caps a file at 2 GiB; store_weights gathers the data after
    onnx.save(half, str(dst), save_as_external_data=large, location=dst.name + ".data")


def drop_fp16_round_trips(graph) -> int:
    """Remove float32 -> float16 -> float32 Cast pairs; returns how many values were rewired.

    ``convert_float_to_float16`` casts every output of a kept-float32 node to float16
    and back for a float32 consumer, so one residual add would hand the next one a
    value clipped to float16 (inf past 65504). Each consumer of such a round trip
    reads the float32 original instead.
    """
    from onnx import TensorProto

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producer = {out: node for node in graph.node for out in node.output}
    rewired = {}  # float32 round-trip output -> the float32 original
    for node in graph.node:
        source = producer.get(node.input[0]) if node.input else None
        if cast_to(node) == TensorProto.FLOAT and source is not None and cast_to(source) == TensorProto.FLOAT16:
            rewired[node.output[0]] = source.input[0]
    if not rewired:
        return 0
    from onnx import helper

    graph_outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        if node.output[0] not in rewired:
            keep.append(node)
        elif node.output[0] in graph_outputs:  # a float32 graph output (the logsumexp) keeps its name
            keep.append(helper.make_node("Identity", [rewired[node.output[0]]], [node.output[0]], name=node.name))
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rewired:
                node.input[i] = rewired[name]
    used = {name for n in keep for name in n.input} | graph_outputs
    keep = [n for n in keep if cast_to(n) != TensorProto.FLOAT16 or n.output[0] in used]  # casts now unread
    del graph.node[:]
    graph.node.extend(keep)
    return len(rewired)
