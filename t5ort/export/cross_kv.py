"""The cross-attention keys/values move into the encoder graph.

Every decoder layer attends to the encoder output through its own key and value
projections, and those never change during a generation. optimum computes them
in the decoder's first step (a separate first-step graph, or an If branch of the
merged one). t5ort appends them to the encoder graph instead: one MatMul,
Reshape and Transpose per layer and kind, the same math as the PyTorch module
(``k(hidden).view(batch, -1, heads, d_kv).transpose(1, 2)``). The decoder is then
optimum's with-past graph alone, for every step including the first (with an
empty self-attention cache): no If node, no second copy of the decoder weights
in memory, and a decoder session whose packed weights replace the originals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def cross_kv_names(layers: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The encoder graph's outputs: keys and values per decoder layer (optimum's names for them)."""
    return (tuple(f"present.{i}.encoder.key" for i in range(layers)),
            tuple(f"present.{i}.encoder.value" for i in range(layers)))


def append_cross_kv(encoder_path: Path, torch_model, hidden_output: str = "last_hidden_state") -> None:
    """Add the decoder layers' cross-attention keys/values (from ``torch_model``'s weights) to the encoder graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(encoder_path))
    graph = model.graph
    if hidden_output not in {o.name for o in graph.output}:
        raise ValueError(f"{encoder_path}: no output {hidden_output!r} to compute cross-attention keys/values from.")
    config = torch_model.config
    heads, d_kv = int(config.num_heads), int(config.d_kv)
    split_heads = "cross_kv/split_heads_shape"
    # [batch, src_len, heads*d_kv] -> [batch, src_len, heads, d_kv]; 0 keeps the batch dimension.
    graph.initializer.append(numpy_helper.from_array(np.array([0, -1, heads, d_kv], dtype=np.int64), split_heads))
    keys, values = cross_kv_names(len(torch_model.decoder.block))
    for i, block in enumerate(torch_model.decoder.block):
        attention = block.layer[1].EncDecAttention
        for linear, output in ((attention.k, keys[i]), (attention.v, values[i])):
            weight = f"cross_kv/{output}/weight"  # nn.Linear's weight, transposed: [d_model, heads*d_kv]
            graph.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(linear.weight.detach().float().numpy().T), weight))
            projected, split = f"cross_kv/{output}/projected", f"cross_kv/{output}/split"
            graph.node.extend([
                helper.make_node("MatMul", [hidden_output, weight], [projected], name=f"cross_kv/{output}/MatMul"),
                helper.make_node("Reshape", [projected, split_heads], [split], name=f"cross_kv/{output}/Reshape"),
                helper.make_node("Transpose", [split], [output], name=f"cross_kv/{output}/Transpose",
                                 perm=[0, 2, 1, 3]),  # [batch, heads, src_len, d_kv]
            ])
            graph.output.append(helper.make_tensor_value_info(
                output, TensorProto.FLOAT, ["batch_size", heads, "encoder_sequence_length", d_kv]))
    large = model.ByteSize() > 1 << 30  # protobuf caps a file at 2 GiB; store_weights gathers the data after
    onnx.save(model, str(encoder_path), save_as_external_data=large, location=encoder_path.name + ".data")
