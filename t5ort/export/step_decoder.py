"""The in-flight step graph: one decoder step over a self-attention cache held in place by the runtime.

optimum's with-past decoder concatenates each layer's cached keys/values with the new
position's and returns the whole cache again (``present``): every step reads and writes
the full cache once more before attention reads it. In-flight batching keeps 16 rows and
a cache as wide as its oldest row's history, so that copy is a large share of its steps
(t5-small shape, 16 rows, 200 cached positions: onnxruntime's Concat 11 of 43 ms).

This graph takes the cache as a buffer with spare columns and returns only the new
position's keys/values, which the runtime writes into the next free column
(:class:`t5ort.runtime.stepcache.StepGraphs`). Attention reads the buffer once:

    scores = [q . K_buffer^T | q . k_new^T] + [bias(j - P) + mask | bias(0)]
    out    = softmax(scores)[:C] . V_buffer + softmax(scores)[C] * v_new

``past_length`` P is the column the new position would take in the concatenated cache
(the shared, left-padded width); the buffer columns from P on are free and masked, and
the position bias depends only on the query-key distance, as in every T5 decoder (T5,
mT5, LongT5: the first layer's bias for all; UMT5: each layer's own). The export checks its
logits against the with-past decoder's (:func:`check_step_graph`), and so do tests/test_inflight.py
(against PyTorch too) and tests/test_quantize.py (int8).
"""

from __future__ import annotations

import warnings
from pathlib import Path

STEP_FILE = "decoder_step_model.onnx"
CAPACITY_AXIS = "cache_capacity"


def step_io_names(layers: int) -> dict:
    """The step graph's tensor names, by role (the manifest's ``StepIO``)."""
    def names(part: str, kind: str) -> tuple[str, ...]:
        return tuple(f"{part}.{i}.{kind}" for i in range(layers))

    return {
        "input_ids": "input_ids",
        "encoder_attention_mask": "encoder_attention_mask",
        "self_attention_mask": "cache_mask",
        "past_length": "past_length",
        "logits": "logits",
        "cache_key": names("cache", "key"),
        "cache_value": names("cache", "value"),
        "cross_key": names("cross", "key"),
        "cross_value": names("cross", "value"),
        "new_key": names("new", "key"),
        "new_value": names("new", "value"),
    }


def _module(torch_model):
    import torch

    class StepDecoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.decoder = model.decoder
            self.lm_head = model.lm_head
            self.scale = model.config.d_model ** -0.5 if model.config.tie_word_embeddings else None
            self.layers = len(model.decoder.block)

        def forward(self, input_ids, encoder_attention_mask, cache_mask, past_length, *kv):
            layers = self.layers
            cache, cross = kv[: 2 * layers], kv[2 * layers:]
            dtype = torch.float32
            minimum = torch.finfo(dtype).min
            h = self.decoder.embed_tokens(input_ids)  # [B, 1, D]
            batch = h.shape[0]
            self_mask = (1.0 - cache_mask[:, None, None, :].to(dtype)) * minimum  # [B, 1, 1, C]
            cross_mask = (1.0 - encoder_attention_mask[:, None, None, :].to(dtype)) * minimum  # [B, 1, 1, S]
            bias_past = bias_new = None
            new = []
            for i, block in enumerate(self.decoder.block):
                sa = block.layer[0]
                attn = sa.SelfAttention
                heads, d_kv = attn.n_heads, attn.key_value_proj_dim
                x = sa.layer_norm(h)
                q = attn.q(x).view(batch, 1, heads, d_kv).transpose(1, 2)  # [B, H, 1, d]
                k = attn.k(x).view(batch, 1, heads, d_kv).transpose(1, 2)
                v = attn.v(x).view(batch, 1, heads, d_kv).transpose(1, 2)
                key, value = cache[2 * i], cache[2 * i + 1]  # [B, H, C, d]
                if bias_past is None or attn.has_relative_attention_bias:
                    bias_past = attn.compute_bias(1, key.shape[2], cache_position=past_length) + self_mask
                    bias_new = attn.compute_bias(1, 1)  # distance 0
                scores = torch.cat([torch.matmul(q, key.transpose(3, 2)), torch.matmul(q, k.transpose(3, 2))], dim=-1)
                scores = scores + torch.cat([bias_past.expand(batch, -1, -1, -1),
                                             bias_new.expand(batch, -1, -1, -1)], dim=-1)
                weights = torch.softmax(scores.float(), dim=-1).type_as(scores)  # [B, H, 1, C + 1]
                columns = key.shape[2]
                out = torch.matmul(weights[..., :columns], value) + weights[..., columns:] * v
                h = h + attn.o(out.transpose(1, 2).reshape(batch, 1, heads * d_kv))
                ca = block.layer[1]
                cattn = ca.EncDecAttention
                x = ca.layer_norm(h)
                q = cattn.q(x).view(batch, 1, heads, d_kv).transpose(1, 2)
                ckey, cvalue = cross[2 * i], cross[2 * i + 1]  # [B, H, S, d]
                scores = torch.matmul(q, ckey.transpose(3, 2)) + cross_mask
                weights = torch.softmax(scores.float(), dim=-1).type_as(scores)
                out = torch.matmul(weights, cvalue)
                h = h + cattn.o(out.transpose(1, 2).reshape(batch, 1, heads * d_kv))
                h = block.layer[-1](h)
                new += [k, v]
            h = self.decoder.final_layer_norm(h)
            if self.scale is not None:
                h = h * self.scale
            return (self.lm_head(h), *new)

    return StepDecoder(torch_model).eval()


def export_step_graph(torch_model, path: Path) -> None:
    """Write the step graph of ``torch_model`` (fp32) to ``path``, weights inside (store_weights moves them)."""
    import torch

    config = torch_model.config
    layers, heads, d_kv = int(config.num_decoder_layers), int(config.num_heads), int(config.d_kv)
    io = step_io_names(layers)
    batch, capacity, source = 2, 5, 3
    cache = [torch.zeros(batch, heads, capacity, d_kv) for _ in range(2 * layers)]
    cross = [torch.randn(batch, heads, source, d_kv) for _ in range(2 * layers)]
    args = (torch.ones(batch, 1, dtype=torch.long), torch.ones(batch, source, dtype=torch.long),
            torch.ones(batch, capacity, dtype=torch.long), torch.tensor([capacity - 2]), *cache, *cross)
    kv_in = [n for pair in zip(io["cache_key"], io["cache_value"]) for n in pair]
    cross_in = [n for pair in zip(io["cross_key"], io["cross_value"]) for n in pair]
    kv_out = [n for pair in zip(io["new_key"], io["new_value"]) for n in pair]
    inputs = [io["input_ids"], io["encoder_attention_mask"], io["self_attention_mask"], io["past_length"],
              *kv_in, *cross_in]
    axes = {io["input_ids"]: {0: "batch_size"}, io["encoder_attention_mask"]: {0: "batch_size", 1: "encoder_sequence_length"},
            io["self_attention_mask"]: {0: "batch_size", 1: CAPACITY_AXIS}, io["logits"]: {0: "batch_size"}}
    axes.update({n: {0: "batch_size", 2: CAPACITY_AXIS} for n in kv_in})
    axes.update({n: {0: "batch_size", 2: "encoder_sequence_length"} for n in cross_in})
    axes.update({n: {0: "batch_size"} for n in kv_out})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter, as optimum's
        torch.onnx.export(_module(torch_model), args, str(path), input_names=inputs,
                          output_names=[io["logits"], *kv_out], dynamic_axes=axes, opset_version=18,
                          do_constant_folding=True, dynamo=False)


def step_tolerance(parity: dict) -> float:
    """How far the step graph may lie from the with-past decoder: the latitude the gate gave the decoder,
    its absolute tolerance or, where it passed by the float64 rule (an ill-conditioned checkpoint, whose
    fp32 results differ by more with any change of summation order), its float64 bound."""
    if parity.get("passed_by") == "float64" and parity.get("float64_bound") is not None:
        return max(parity["tolerance"], parity["float64_bound"])
    return parity["tolerance"]


def check_step_graph(export_dir: Path, *, steps: int, tolerance: float) -> dict:
    """The step graph against the with-past decoder, through the runtime: two inputs decoded in one
    in-flight batch, the second joining after a few steps (left-padded), each against its own
    ``generate``. Returns the figures for the manifest; refuses (ExportError) above ``tolerance``."""
    import numpy as np

    from ..runtime.errors import ExportError
    from ..runtime.inflight import InflightBatch
    from ..runtime.model import load
    from .parity import check_inputs

    runtime = load(export_dir, verify=False)
    ids, mask = check_inputs(runtime.vocab_size, seed=2)
    inputs = [row[m.astype(bool)] for row, m in zip(ids, mask)]
    steps = max(steps, 4)
    options = dict(max_new_tokens=steps, min_new_tokens=steps)
    batch = InflightBatch(runtime)
    if batch.decoder != "step graph":
        raise ExportError(f"{export_dir}: the step graph did not load; re-export the model.")
    members = [batch.add(inputs[0], **options)]
    logits: dict = {id(members[0]): []}
    while batch.live_members:
        if batch.stats.steps == 2:  # the second input joins a running batch: left-padded in the cache
            members.append(batch.add(inputs[1], **options))
            logits[id(members[1])] = []
        for out in batch.step():
            logits[id(out.member)].append(out.logits[0].copy())
    worst, agree = 0.0, True
    for member, source in zip(members, inputs):
        alone = runtime.generate(input_ids=source[None], output_logits=True, **options)
        got = np.stack(logits[id(member)])
        worst = max(worst, float(np.abs(got - alone.logits[0]).max()))
        agree &= bool(np.array_equal(member.finalize().sequences[0], alone.sequences[0]))
    report = {"max_abs_diff_vs_decoder": worst, "tolerance": tolerance, "steps": steps, "tokens_equal": agree}
    if worst > tolerance or not agree:
        raise ExportError(f"the in-flight step graph differs from the with-past decoder by {worst:.3g} "
                          f"(tolerance {tolerance:.3g}, tokens equal: {agree}); this is a t5ort bug, please report it.")
    return report
