"""The two graphs, traced from :mod:`t5ort.export.modules` to ONNX, and their tensor names (the manifest's IO).

- ``encoder_model.onnx``: ``input_ids``, ``attention_mask`` [batch_size, encoder_sequence_length] ->
  ``last_hidden_state`` and ``cross.{i}.key`` / ``cross.{i}.value`` [batch_size, heads,
  encoder_sequence_length, d_kv] per decoder layer.
- ``decoder_model.onnx``: ``input_ids`` [batch_size, decoder_sequence_length] (the T new positions),
  ``encoder_attention_mask``, ``cache_mask`` [batch_size, cache_capacity], ``past_length`` [1],
  ``cache.{i}.key`` / ``.value`` [batch_size, heads, cache_capacity, d_kv], the encoder's ``cross.{i}.*``
  -> ``logits`` [batch_size, decoder_sequence_length, vocab], their ``logsumexp`` [batch_size,
  decoder_sequence_length], and ``present.{i}.key`` / ``.value`` [batch_size, heads, cache_capacity, d_kv]:
  the cache buffers with the new positions written in (the runtime binds them to the ``cache.*`` inputs'
  memory, so MultiHeadAttention writes in place).

Traced with torch's TorchScript exporter (``dynamo=False``): the modules are plain tensor code with no
Python branch on a shape, so the trace holds for every batch, length and capacity (the tests run the
graphs at other shapes than the traced ones against transformers).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..runtime.manifest import GraphSpec, TensorSpec, file_sha256
from .modules import Decoder, Encoder, T5Spec

ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"
OPSET = 18
BATCH, SOURCE, NEW, CAPACITY = "batch_size", "encoder_sequence_length", "decoder_sequence_length", "cache_capacity"


def _per_layer(part: str, kind: str, layers: int) -> tuple[str, ...]:
    return tuple(f"{part}.{i}.{kind}" for i in range(layers))


def encoder_io_names(layers: int) -> dict:
    """The encoder graph's tensor names, by role (the manifest's ``EncoderIO``)."""
    return {"input_ids": "input_ids", "attention_mask": "attention_mask", "hidden_states": "last_hidden_state",
            "cross_key": _per_layer("cross", "key", layers), "cross_value": _per_layer("cross", "value", layers)}


def decoder_io_names(layers: int) -> dict:
    """The decoder graph's tensor names, by role (the manifest's ``DecoderIO``)."""
    return {
        "input_ids": "input_ids",
        "encoder_attention_mask": "encoder_attention_mask",
        "self_attention_mask": "cache_mask",
        "past_length": "past_length",
        "logits": "logits",
        "logsumexp": "logsumexp",
        "cache_key": _per_layer("cache", "key", layers),
        "cache_value": _per_layer("cache", "value", layers),
        "cross_key": _per_layer("cross", "key", layers),
        "cross_value": _per_layer("cross", "value", layers),
        "present_key": _per_layer("present", "key", layers),
        "present_value": _per_layer("present", "value", layers),
    }


def _pairs(keys, values) -> list[str]:
    return [n for pair in zip(keys, values) for n in pair]


def _export(module, args, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


def export_encoder(torch_model, spec: T5Spec, path: Path) -> None:
    """Write the encoder graph (weights inside; store_weights moves them out)."""
    import torch

    io = encoder_io_names(spec.num_decoder_layers)
    cross = _pairs(io["cross_key"], io["cross_value"])
    ids = torch.full((2, 9), 3, dtype=torch.long)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    axes = {io["input_ids"]: {0: BATCH, 1: SOURCE}, io["attention_mask"]: {0: BATCH, 1: SOURCE},
            io["hidden_states"]: {0: BATCH, 1: SOURCE}, **{n: {0: BATCH, 2: SOURCE} for n in cross}}
    if spec.encoder_attention == "full":
        encoder = Encoder(torch_model, spec)
    else:
        from .longt5 import LongT5Encoder

        encoder = LongT5Encoder(torch_model, spec)
    _export(encoder.eval(), (ids, mask), path, [io["input_ids"], io["attention_mask"]],
            [io["hidden_states"], *cross], axes)
    _complete_attention_nodes(path)
    _declare_outputs(path, {name: [BATCH, spec.num_heads, SOURCE, spec.d_kv] for name in cross})


def export_decoder(torch_model, spec: T5Spec, path: Path) -> None:
    """Write the decoder graph (weights inside; store_weights moves them out)."""
    import torch

    layers, heads, d_kv = spec.num_decoder_layers, spec.num_heads, spec.d_kv
    io = decoder_io_names(layers)
    batch, new, capacity, source = 2, 3, 5, 4
    cache = [torch.zeros(batch, heads, capacity, d_kv) for _ in range(2 * layers)]
    cross = [torch.randn(batch, heads, source, d_kv) for _ in range(2 * layers)]
    args = (torch.ones(batch, new, dtype=torch.long), torch.ones(batch, source, dtype=torch.long),
            torch.ones(batch, capacity, dtype=torch.long), torch.tensor([1]), *cache, *cross)
    cache_in, cross_in = _pairs(io["cache_key"], io["cache_value"]), _pairs(io["cross_key"], io["cross_value"])
    present = _pairs(io["present_key"], io["present_value"])
    inputs = [io["input_ids"], io["encoder_attention_mask"], io["self_attention_mask"], io["past_length"],
              *cache_in, *cross_in]
    axes = {io["input_ids"]: {0: BATCH, 1: NEW}, io["encoder_attention_mask"]: {0: BATCH, 1: SOURCE},
            io["self_attention_mask"]: {0: BATCH, 1: CAPACITY}, io["logits"]: {0: BATCH, 1: NEW},
            io["logsumexp"]: {0: BATCH, 1: NEW},
            **{n: {0: BATCH, 2: CAPACITY} for n in cache_in + present}, **{n: {0: BATCH, 2: SOURCE} for n in cross_in}}
    _export(Decoder(torch_model, spec).eval(), args, path, inputs, [io["logits"], io["logsumexp"], *present], axes)
    _complete_attention_nodes(path)
    _declare_outputs(path, {name: [BATCH, heads, CAPACITY, d_kv] for name in present})


def _complete_attention_nodes(path: Path) -> None:
    """Give every MultiHeadAttention node (:class:`~t5ort.export.modules.FusedAttention`,
    :class:`~t5ort.export.modules.CachedAttention`) its empty optional inputs (the projections' bias, the key padding
    mask: the tracer cannot write an empty input) and the graph the com.microsoft opset."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MultiHeadAttention":
            query, key, value, bias, *past = node.input  # past: past_key, past_value, past_length (the decoder)
            del node.input[:]
            node.input.extend([query, key, value, "", "", bias, *past])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))


def _declare_outputs(path: Path, shapes: dict) -> None:
    """Write the outputs' full shapes (the tracer leaves the heads and d_kv of sliced tensors symbolic)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for output in model.graph.output:
        if output.name in shapes:
            for dim, size in zip(output.type.tensor_type.shape.dim, shapes[output.name]):
                dim.Clear()
                if isinstance(size, int):
                    dim.dim_value = size
                else:
                    dim.dim_param = size
    onnx.save(model, str(path))


def graph_spec(path: Path) -> GraphSpec:
    """The manifest entry of the graph at ``path``: its inputs and outputs as written, and its checksum."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        shape = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim)
        return TensorSpec(value.name, dtype, shape)

    return GraphSpec(
        path.name, tuple(spec(v) for v in graph.input), tuple(spec(v) for v in graph.output), file_sha256(path)
    )
