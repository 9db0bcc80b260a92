"""LongT5's encoder layers (local and transient-global attention), written over a checkpoint's weights.

LongT5 (https://huggingface.co/papers/2112.07916) cuts the sequence into blocks of
``block_len = local_radius + 1`` tokens; each token attends to the tokens of its block and of the
blocks either side that are closer than ``block_len``. Transient-global attention also gives every
token G = S // ``global_block_size`` global keys/values: per global block, the layer's normed input
summed over the block's tokens, normed again (``global_input_layer_norm``). The position bias (local,
and for transient-global the globals' side bias) comes from layer 0's weights and serves every layer.

This reproduces transformers' ``LongT5LocalAttention`` / ``LongT5TransientGlobalAttention``, padding
included: masked scores get -1e10 (a row with every key masked averages them all), tokens after the
last full global block join it, a row shorter than one global block has none (its tokens attend no
global), and a padding token attends the globals past its row's end.

The graph traces for every batch and length: shapes come from the runtime shape (padding to a multiple
of ``block_len``), and G is never written in a reshape (the side bias is built in the blocked layout by
broadcasting), so G = 0 works whatever Reshape's ``allowzero``.
"""

from __future__ import annotations

import torch

from .modules import Encoder, T5Spec, attend, bias_table, lookup_bias, merge_heads

MASKED = -1e10  # transformers' (and the original's) masked score


class LongT5Encoder(Encoder):
    """LongT5's encoder: :class:`~t5ort.export.modules.Encoder` with local or transient-global attention."""

    def layers(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return encoder_layers(self, h, attention_mask)


def encoder_layers(graph, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Embeddings [B, S, D] -> every encoder layer -> [B, S, D], before the final layer norm. ``graph``: the
    encoder, whose named norm, residual and feed-forward this uses."""
    blocks, spec = graph.model.encoder.block, graph.spec
    block_len = spec.local_radius + 1
    transient_global = spec.encoder_attention == "transient-global"
    name = "TransientGlobalSelfAttention" if transient_global else "LocalSelfAttention"
    first = getattr(blocks[0].layer[0], name)
    bias = _local_bias(attention_mask, first, spec, block_len)  # [B, nb, H, bl, 3bl]
    one_hot = None
    if transient_global:
        ids, segments = _global_blocks(attention_mask, spec.global_block_size)  # [B, S], [B, G]
        one_hot = (ids[..., None] == torch.arange(segments.shape[1])).to(h.dtype)  # [B, S, G]
        bias = torch.cat([bias, _side_bias(attention_mask, ids, segments, first, spec, block_len)], dim=-1)
    for block in blocks:
        layer = block.layer[0]
        x = graph.norm(h, layer.layer_norm.weight)
        h = graph.add(h, _attention(graph, x, getattr(layer, name), bias, one_hot, block_len))
        h = graph.feed_forward(h, block.layer[1])
    return h


def _attention(graph, x, attention, bias, one_hot, block_len: int) -> torch.Tensor:
    """One layer's attention over its normed input x [B, S, D] -> [B, S, D] (before the residual)."""
    spec, length = graph.spec, x.shape[1]
    q = _heads(_blocks(x @ attention.q.weight.T, block_len), spec)  # [B, nb, H, bl, d]
    k = _heads(_three_blocks(x @ attention.k.weight.T, block_len), spec)  # [B, nb, H, 3bl, d]
    v = _heads(_three_blocks(x @ attention.v.weight.T, block_len), spec)
    scores = graph.scores(torch.matmul, q, k.transpose(3, 4))  # [B, nb, H, bl, 3bl]
    if one_hot is None:
        out = attend(scores + bias, v)  # [B, nb, H, bl, d]
    else:  # every block also attends the G globals
        g = graph.norm(one_hot.transpose(1, 2) @ x, attention.global_input_layer_norm.weight)  # [B, G, D]
        side_k = _heads(g @ attention.k.weight.T, spec)[:, None]  # [B, 1, H, G, d]
        side_v = _heads(g @ attention.v.weight.T, spec)[:, None]
        scores = torch.cat([scores, q @ side_k.transpose(3, 4)], dim=-1) + bias  # [B, nb, H, bl, 3bl + G]
        weights = torch.softmax(scores.float(), dim=-1)
        out = weights[..., :3 * block_len] @ v + weights[..., 3 * block_len:] @ side_v  # [B, nb, H, bl, d]
    out = out.transpose(1, 2).flatten(2, 3)[:, :, :length]  # [B, H, S, d]
    return merge_heads(out, attention.o.weight, spec)


def _local_bias(attention_mask, first, spec: T5Spec, block_len: int) -> torch.Tensor:
    """Position bias and mask of the local keys: [B, nb, H, bl, 3bl]."""
    positions = torch.arange(3 * block_len)
    relative = positions[None, :] - positions[block_len:2 * block_len, None]  # [bl, 3bl]: key - query
    table = bias_table(first.relative_attention_bias.weight, spec, True)
    queries = _blocks(attention_mask, block_len)[..., :, None] != 0  # [B, nb, bl, 1]
    keys = _three_blocks(attention_mask, block_len)[..., None, :] != 0  # [B, nb, 1, 3bl]
    allowed = queries & keys & (relative.abs() < block_len)  # [B, nb, bl, 3bl]
    return lookup_bias(table, relative, spec.max_distance) + torch.where(allowed, 0.0, MASKED)[:, :, None]


def _side_bias(attention_mask, ids, segments, first, spec: T5Spec, block_len: int) -> torch.Tensor:
    """Position bias and mask of the global keys: [B, nb, H, bl, G]."""
    table = bias_table(first.global_relative_attention_bias.weight, spec, True)
    relative = torch.arange(segments.shape[1]) - _blocks(ids, block_len)[..., None]  # [B, nb, bl, G]
    allowed = _blocks(attention_mask, block_len)[..., None] == segments[:, None, None, :]  # [B, nb, bl, G]
    return torch.where(allowed, 0.0, MASKED)[:, :, None] + lookup_bias(table, relative, spec.max_distance)


def _global_blocks(attention_mask, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's global block [B, S] (-1: padding, or the row has no full block) and each global's
    segment [B, G]: 1 up to the row's last block, 0 past it (transformers' ``_make_global_fixed_block_ids``)."""
    positions = torch.arange(attention_mask.shape[1])  # [S]
    ids = torch.where(attention_mask != 0, positions // block_size, -1)  # [B, S]
    full = ((positions % block_size == block_size - 1) & (ids >= 0)).sum(-1, keepdim=True) - 1  # [B, 1]
    ids = torch.minimum(ids, full)  # the tokens after the last full block join it
    globals_ = torch.arange(attention_mask.shape[1] // block_size)  # [G]
    return ids, (globals_ <= ids.max(-1, keepdim=True).values).to(attention_mask.dtype)


def _blocks(x: torch.Tensor, block_len: int, before: int = 0, after: int = 0) -> torch.Tensor:
    """[B, S, ...] -> zero-padded [B, before + ceil(S / block_len) + after, block_len, ...]."""
    pad = [0, 0] * (x.dim() - 2) + [before * block_len, -x.shape[1] % block_len + after * block_len]
    x = torch.nn.functional.pad(x, pad)
    return x.unflatten(1, (-1, block_len))


def _three_blocks(x: torch.Tensor, block_len: int) -> torch.Tensor:
    """[B, S, ...] -> [B, nb, 3 * block_len, ...]: for each block, the block before, itself and the block after."""
    x = _blocks(x, block_len, before=1, after=1)  # [B, nb + 2, bl, ...]
    return torch.cat([x[:, :-2], x[:, 1:-1], x[:, 2:]], dim=2)


def _heads(x: torch.Tensor, spec: T5Spec) -> torch.Tensor:
    """[..., L, H * d] -> [..., H, L, d]."""
    return x.unflatten(-1, (spec.num_heads, spec.d_kv)).transpose(-2, -3)
