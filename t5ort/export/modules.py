"""The graphs t5ort exports, written as torch modules over a checkpoint's weights (never its forward code).

transformers refactors its T5 modules between releases (4.x to 5.x changed the attention,
the masks and ``compute_bias``), and tracing them gives graphs that are wrong on the
other release. These modules take only the checkpoint's *weights* (names unchanged from
transformers 4.x to 5.x) and the facts of :class:`T5Spec` (read from the config in one
place), and compute T5 with plain tensor ops that trace to ONNX the same way whatever
transformers is installed:

- :class:`Encoder`: ``input_ids, attention_mask -> last_hidden_state`` and every decoder
  layer's cross-attention keys/values (computed once per input); each layer's self-attention is
  one onnxruntime ``MultiHeadAttention`` node (:class:`FusedAttention`) with the position bias and
  the padding mask as one additive bias (LongT5's local attention keeps its own ops);
- :class:`Decoder`: T new positions per row over a self-attention cache held in place: buffers
  ``[rows, heads, capacity, d_kv]`` with a mask and ``past_length`` (the column the first new
  position takes). T = 1 is a decoding step; T > 1 teacher-forces (scoring, speculative
  verification). Each layer's self-attention is one onnxruntime ``com.microsoft.MultiHeadAttention``
  node (:class:`CachedAttention`): it reads columns ``0 .. past_length`` of the buffers, writes the
  new positions' keys/values into the next columns of the same buffers (its ``present`` outputs are
  bound to the ``past`` inputs' memory), and adds one bias ``[rows, heads, T, past_length + T]``
  that holds T5's position bias, the cache mask and the causal mask (computed once per step; per
  layer for UMT5). The decoder also returns the logsumexp of every position's logits, so that the
  runtime's log-probs and its NaN/inf check need no pass over the vocabulary.

The relative position bias is looked up in a table of the checkpoint's buckets, computed here
at export time for distances within +-``max_distance`` (beyond it the bucket no longer changes), so
the graph holds a Gather instead of T5's float log bucketing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..runtime.errors import ExportError

ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")


@dataclass(frozen=True)
class T5Spec:
    """What differs between T5 variants, read from the config in one place (:meth:`from_config`).

    ===========  ========================  =====================  ===============================
    variant      feed-forward              position bias          encoder self-attention
    ===========  ========================  =====================  ===============================
    t5 v1.0      relu                      first layer's, shared  full
    t5 v1.1/mT5  gated-gelu (gelu_new)     first layer's, shared  full
    umt5         gated-gelu                every layer its own    full
    longt5       gated-gelu                first layer's, shared  local or transient-global
    ===========  ========================  =====================  ===============================

    ``scale_head``: the decoder output is scaled by ``d_model ** -0.5`` before the head. transformers 4.x
    scales where the config ties the head to the embedding; 5.x reads ``scale_decoder_outputs`` (T5,
    UMT5, LongT5: the saved ``tie_word_embeddings``) and never scales mT5.
    """

    model_type: str
    d_model: int
    d_kv: int
    num_heads: int
    num_layers: int
    num_decoder_layers: int
    num_buckets: int
    max_distance: int
    eps: float
    activation: str
    gated: bool
    scale_head: bool
    bias_every_layer: bool
    encoder_attention: str = "full"  # or "local", "transient-global" (LongT5)
    local_radius: int = 0
    global_block_size: int = 0

    @classmethod
    def from_config(cls, config) -> T5Spec:
        activation = str(getattr(config, "dense_act_fn", "relu"))
        if activation not in ACTIVATIONS:
            raise ExportError(f"dense_act_fn {activation!r} is not supported; t5ort exports {ACTIVATIONS}.")
        longt5 = config.model_type == "longt5"
        return cls(
            model_type=config.model_type,
            d_model=int(config.d_model),
            d_kv=int(config.d_kv),
            num_heads=int(config.num_heads),
            num_layers=int(config.num_layers),
            num_decoder_layers=int(config.num_decoder_layers),
            num_buckets=int(config.relative_attention_num_buckets),
            max_distance=int(config.relative_attention_max_distance),
            eps=float(config.layer_norm_epsilon),
            activation=activation,
            gated=bool(getattr(config, "is_gated_act", False)),
            scale_head=scales_head(config),
            bias_every_layer=config.model_type == "umt5",
            encoder_attention=str(config.encoder_attention_type) if longt5 else "full",
            local_radius=int(config.local_radius) if longt5 else 0,
            global_block_size=int(config.global_block_size) if longt5 else 0,
        )


def scales_head(config) -> bool:
    """Whether the installed transformers scales this checkpoint's decoder output (:class:`T5Spec`)."""
    import transformers

    if hasattr(config, "scale_decoder_outputs"):
        return bool(config.scale_decoder_outputs)
    if config.model_type == "mt5" and int(transformers.__version__.split(".")[0]) >= 5:
        return False
    return bool(config.tie_word_embeddings)


# ---- the pieces ---------------------------------------------------------------------------


def position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                    max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative position (memory - query), in transformers' float32 arithmetic."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, relative_position, large)


def bias_table(embedding: torch.Tensor, spec: T5Spec, bidirectional: bool) -> torch.Tensor:
    """[2 * max_distance + 1, heads]: the bias of relative positions -max_distance .. max_distance."""
    distances = torch.arange(-spec.max_distance, spec.max_distance + 1, dtype=torch.long)
    with torch.no_grad():
        return embedding[position_bucket(distances, bidirectional, spec.num_buckets, spec.max_distance)].clone()


def lookup_bias(table: torch.Tensor, relative: torch.Tensor, max_distance: int) -> torch.Tensor:
    """The bias of ``relative`` positions [..., Q, K] as [..., heads, Q, K]."""
    values = table[torch.clamp(relative, -max_distance, max_distance) + max_distance]  # [..., Q, K, heads]
    n = values.dim()  # static: positive axes, which the trace keeps as they are
    return values.permute(*range(n - 3), n - 1, n - 3, n - 2)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """T5's layer norm: no mean, no bias (the variance in float32)."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return torch.relu(x)
    if name in ("gelu_new", "gelu_pytorch_tanh"):  # transformers' NewGELUActivation, written out
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    if name == "gelu":
        return torch.nn.functional.gelu(x)
    return torch.nn.functional.silu(x)


def split_heads(x: torch.Tensor, weight: torch.Tensor, spec: T5Spec) -> torch.Tensor:
    """[B, L, D] -> projection -> [B, heads, L, d_kv]."""
    batch = x.shape[0]
    return (x @ weight.T).view(batch, -1, spec.num_heads, spec.d_kv).transpose(1, 2)


def merge_heads(x: torch.Tensor, weight: torch.Tensor, spec: T5Spec) -> torch.Tensor:
    """[B, heads, L, d_kv] -> [B, L, heads*d_kv] -> output projection."""
    batch = x.shape[0]
    return x.transpose(1, 2).reshape(batch, -1, spec.num_heads * spec.d_kv) @ weight.T


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """int64 1/0 [..., K] -> float 0 / float32 min, as transformers' extended attention mask."""
    return (1.0 - mask.to(torch.float32)) * torch.finfo(torch.float32).min


def attend(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.matmul(torch.softmax(scores.float(), dim=-1), values)


# ---- the graphs ---------------------------------------------------------------------------


class Scope(torch.nn.Module):
    """Runs ``fn(*args)`` under this module's name, so that the traced ONNX nodes carry it (``/layer_norm/Add``):
    the fp16 conversion keeps the residual stream's nodes (``residual``, ``layer_norm``, ``ff_out``) in float32
    by these names, and the tests find the attention scores (``scores``) by them."""

    def forward(self, fn, *args):
        return fn(*args)


class _Graph(torch.nn.Module):
    """What both graphs share: the checkpoint, its facts, the named scopes, the position-bias tables
    (buffers named ``relative_attention_bias_{layer}``)."""

    def __init__(self, torch_model, spec: T5Spec, stack, attention: str, bidirectional: bool):
        super().__init__()
        self.spec = spec
        self.model = torch_model
        for name in ("layer_norm", "residual", "scores", "ff_out"):
            setattr(self, name, Scope())
        owners = stack.block if spec.bias_every_layer else stack.block[:1]
        for i, block in enumerate(owners):
            self.register_buffer(f"relative_attention_bias_{i}", bias_table(
                getattr(block.layer[0], attention).relative_attention_bias.weight, spec, bidirectional))

    def table(self, layer: int) -> torch.Tensor:
        return getattr(self, f"relative_attention_bias_{layer if self.spec.bias_every_layer else 0}")

    def norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(rms_norm, x, weight, self.spec.eps)

    def add(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.residual(torch.add, h, x)

    def feed_forward(self, h: torch.Tensor, layer) -> torch.Tensor:
        ff, spec = layer.DenseReluDense, self.spec
        x = self.norm(h, layer.layer_norm.weight)
        if spec.gated:
            x = activate(x @ ff.wi_0.weight.T, spec.activation) * (x @ ff.wi_1.weight.T)
        else:
            x = activate(x @ ff.wi.weight.T, spec.activation)
        return self.add(h, self.ff_out(torch.matmul, x, ff.wo.weight.T))


class Encoder(_Graph):
    """``input_ids, attention_mask`` [B, S] -> last_hidden_state [B, S, D], then per decoder layer the
    cross-attention key and value [B, heads, S, d_kv]."""

    def __init__(self, torch_model, spec: T5Spec):
        super().__init__(torch_model, spec, torch_model.encoder, _encoder_attention_name(spec), True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        spec, model = self.spec, self.model
        h = self.layers(model.encoder.embed_tokens.weight[input_ids], attention_mask)  # [B, S, D]
        h = self.norm(h, model.encoder.final_layer_norm.weight)
        cross = []
        for block in model.decoder.block:
            attention = block.layer[1].EncDecAttention
            cross += [split_heads(h, attention.k.weight, spec), split_heads(h, attention.v.weight, spec)]
        return (h, *cross)


    def layers(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, S, D] -> every encoder layer (full self-attention) -> [B, S, D], before the final
        layer norm. LongT5's local and transient-global attention: :class:`t5ort.export.longt5.LongT5Encoder`."""
        spec = self.spec
        positions = torch.arange(h.shape[1], dtype=torch.long)
        relative = positions[None, :] - positions[:, None]  # [S, S]: key - query
        mask = additive_mask(attention_mask)[:, None, None, :]  # [B, 1, 1, S]

        def bias(layer: int) -> torch.Tensor:  # [B, H, S, S]
            return lookup_bias(self.table(layer), relative, spec.max_distance) + mask

        shared = None if spec.bias_every_layer else bias(0)
        for i, block in enumerate(self.model.encoder.block):
            layer = block.layer[0]
            attention = layer.SelfAttention
            x = self.norm(h, layer.layer_norm.weight)
            q, k, v = (x @ w.weight.T for w in (attention.q, attention.k, attention.v))  # [B, S, D]
            out = FusedAttention.apply(q, k, v, shared if shared is not None else bias(i), spec.num_heads)
            h = self.add(h, out @ attention.o.weight.T)
            h = self.feed_forward(h, block.layer[1])
        return h


def _encoder_attention_name(spec: T5Spec) -> str:
    return {"full": "SelfAttention", "local": "LocalSelfAttention",
            "transient-global": "TransientGlobalSelfAttention"}[spec.encoder_attention]


class CachedAttention(torch.autograd.Function):
    """Self-attention of T new positions over the in-place cache, traced as one onnxruntime
    ``com.microsoft.MultiHeadAttention`` node (onnxruntime's CPU and CUDA providers have the kernel).

    ``query``/``key``/``value`` [B, T, D] (projected, heads not split); ``bias`` [B, H, T, P + T], additive
    (T5's position bias and every mask); ``past_key``/``past_value`` [B, H, C, d_kv]; ``past_length``
    int32 [1] = P. Returns the attention output [B, T, D] and the buffers with the new keys/values in
    columns P .. P + T. T5 does not scale the scores: ``scale=1.0`` (the kernel's default is 1/sqrt(d_kv)).
    The graph's inputs 3 and 4 (bias of the projections, key padding mask) stay empty:
    :func:`t5ort.export.trace.export_decoder` writes them after tracing.
    """

    @staticmethod
    def forward(ctx, query, key, value, bias, past_key, past_value, past_length, heads: int):
        batch, new, width = query.shape
        q, k, v = (x.view(batch, new, heads, width // heads).transpose(1, 2) for x in (query, key, value))
        past = bias.shape[-1] - new
        keys = torch.cat([past_key[:, :, :past], k], 2)  # [B, H, P + T, d]
        values = torch.cat([past_value[:, :, :past], v], 2)
        out = torch.softmax(q @ keys.transpose(2, 3) + bias, -1) @ values  # [B, H, T, d]
        present_key, present_value = past_key.clone(), past_value.clone()
        present_key[:, :, past:past + new] = k
        present_value[:, :, past:past + new] = v
        return out.transpose(1, 2).reshape(batch, new, width), present_key, present_value

    @staticmethod
    def symbolic(g, query, key, value, bias, past_key, past_value, past_length, heads):
        out, present_key, present_value = g.op(
            "com.microsoft::MultiHeadAttention", query, key, value, bias, past_key, past_value, past_length,
            num_heads_i=heads, scale_f=1.0, outputs=3)
        for value_out, like in ((out, query), (present_key, past_key), (present_value, past_value)):
            value_out.setType(like.type())  # the exporter's shape inference does not know the contrib op
        return out, present_key, present_value


class FusedAttention(torch.autograd.Function):
    """Self-attention of a whole sequence (the encoder's), traced as one ``com.microsoft.MultiHeadAttention``
    node: ``query``/``key``/``value`` [B, S, D] (heads not split), ``bias`` [B | 1, H, S, S] additive (T5's
    position bias and the padding mask); ``scale=1.0``. The graph's inputs 3 and 4 stay empty, as in
    :class:`CachedAttention`."""

    @staticmethod
    def forward(ctx, query, key, value, bias, heads: int):
        batch, length, width = query.shape
        q, k, v = (x.view(batch, length, heads, width // heads).transpose(1, 2) for x in (query, key, value))
        out = torch.softmax(q @ k.transpose(2, 3) + bias, -1) @ v  # [B, H, S, d]
        return out.transpose(1, 2).reshape(batch, length, width)

    @staticmethod
    def symbolic(g, query, key, value, bias, heads):
        out = g.op("com.microsoft::MultiHeadAttention", query, key, value, bias, num_heads_i=heads, scale_f=1.0)
        out.setType(query.type())
        return out


def checked_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the vocabulary, [B, T, V] -> [B, T]; NaN (or inf) where a position's logits hold a NaN
    or an infinity (an infinite minimum makes ``low - low`` NaN; a finite one adds exactly 0)."""
    low = logits.amin(-1)
    return torch.logsumexp(logits, -1) + (low - low)


class Decoder(_Graph):
    """T new positions per row over an in-place self-attention cache (the module docstring)."""

    def __init__(self, torch_model, spec: T5Spec):
        super().__init__(torch_model, spec, torch_model.decoder, "SelfAttention", False)
        self.logsumexp = Scope()  # kept float32 in fp16 graphs, as the logits are

    def self_bias(self, layer: int, relative_past, relative_new, mask, causal):
        """[B, H, T, P + T]: the position bias of the cached and the new columns, with their masks."""
        table, limit = self.table(layer), self.spec.max_distance
        new = lookup_bias(table, relative_new, limit) + causal  # [H, T, T]
        return torch.cat([lookup_bias(table, relative_past, limit) + mask,  # [B, H, T, P]
                          new.expand(mask.shape[0], -1, -1, -1)], dim=-1)

    def forward(self, input_ids, encoder_attention_mask, cache_mask, past_length, *kv):
        spec, model = self.spec, self.model
        layers = len(model.decoder.block)
        cache, cross = kv[: 2 * layers], kv[2 * layers:]
        new_len = input_ids.shape[1]
        h = model.decoder.embed_tokens.weight[input_ids]  # [B, T, D]
        queries = past_length + torch.arange(new_len, dtype=torch.long)  # [T]: the new positions
        columns = torch.arange(past_length[0], dtype=torch.long)  # [P]: the cached columns attended to
        relative_past = columns[None, :] - queries[:, None]  # [T, P]
        new_positions = torch.arange(new_len, dtype=torch.long)
        relative_new = new_positions[None, :] - new_positions[:, None]  # [T, T]
        causal = torch.where(relative_new > 0, torch.finfo(torch.float32).min, 0.0)  # [T, T]
        self_mask = additive_mask(cache_mask.index_select(1, columns))[:, None, None, :]  # [B, 1, 1, P]
        cross_mask = additive_mask(encoder_attention_mask)[:, None, None, :]  # [B, 1, 1, S]
        position = past_length.to(torch.int32)
        bias = None if spec.bias_every_layer else self.self_bias(0, relative_past, relative_new, self_mask, causal)
        present = []
        for i, block in enumerate(model.decoder.block):
            layer = block.layer[0]
            attention = layer.SelfAttention
            x = self.norm(h, layer.layer_norm.weight)
            q, k, v = (x @ w.weight.T for w in (attention.q, attention.k, attention.v))  # [B, T, D]
            layer_bias = bias if bias is not None else self.self_bias(i, relative_past, relative_new, self_mask,
                                                                      causal)
            out, key, value = CachedAttention.apply(q, k, v, layer_bias, cache[2 * i], cache[2 * i + 1], position,
                                                    spec.num_heads)
            h = self.add(h, out @ attention.o.weight.T)
            layer = block.layer[1]
            attention = layer.EncDecAttention
            x = self.norm(h, layer.layer_norm.weight)
            q = split_heads(x, attention.q.weight, spec)
            out = attend(self.scores(torch.matmul, q, cross[2 * i].transpose(2, 3)) + cross_mask, cross[2 * i + 1])
            h = self.add(h, merge_heads(out, attention.o.weight, spec))
            h = self.feed_forward(h, block.layer[2])
            present += [key, value]
        h = self.norm(h, model.decoder.final_layer_norm.weight)
        if spec.scale_head:
            h = h * spec.d_model ** -0.5
        logits = h @ model.lm_head.weight.T  # [B, T, V]
        return (logits, self.logsumexp(checked_logsumexp, logits), *present)
