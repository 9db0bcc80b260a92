"""The contract between exporter and runtime: ``t5ort.json``.

The exporter writes it; the runtime reads every tensor name from it and never
guesses names from the graphs. Shapes keep the exporter's named dynamic axes
(``batch_size``, ``encoder_sequence_length``, ``past_decoder_sequence_length``...)
so the batch, the encoder length, the new decoder positions and the cached
length stay apart.

Format versions: 5 has one decoder graph over a self-attention cache kept in place
(:class:`DecoderIO`), which runs every decoding path; its self-attention is onnxruntime's fused
MultiHeadAttention writing the new keys/values into the cache buffers itself, and it returns the
logits' logsumexp beside them. Its graphs are t5ort's own, built from the checkpoint's weights.
Older exports are refused with "re-export" (4: the same cache, but the runtime wrote the new
keys/values and computed the logsumexp; 3: optimum's with-past decoder beside an in-flight step graph).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArtifactError

FORMAT_VERSION = 5
CAPACITY_AXIS = "cache_capacity"
MANIFEST_NAME = "t5ort.json"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and shape (ints or axis names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=d["name"], dtype=d["dtype"], shape=tuple(d["shape"]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX file and its full input/output signature."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sha256: str | None = None  # of ``file``, checked by load() unless verify=False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(
            file=d["file"],
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            sha256=d.get("sha256"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(name)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 4 MiB blocks (about 1 s per GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class WeightsSpec:
    """The one file holding the graphs' weights as ONNX external data (each distinct tensor once)."""

    file: str
    sha256: str | None = None  # checked by load() unless verify=False
    bytes: int = 0


@dataclass(frozen=True)
class EncoderIO:
    """Tensor names of the encoder graph, by role.

    ``cross_key``/``cross_value``: per decoder layer, in layer order, the
    cross-attention keys/values [batch, heads, src_len, d_kv] that every decoding
    step reads; the encoder computes them once.
    """

    input_ids: str
    attention_mask: str
    hidden_states: str
    cross_key: tuple[str, ...]
    cross_value: tuple[str, ...]


@dataclass(frozen=True)
class DecoderIO:
    """Tensor names of the decoder graph (t5ort/export/trace.py), by role; per-layer names in layer order.

    T new positions per row (``input_ids`` [batch_size, decoder_sequence_length]) over a
    self-attention cache the runtime keeps in place: ``cache_key``/``cache_value`` [batch_size,
    heads, cache_capacity, d_kv] (inputs), ``self_attention_mask`` int64 [batch_size,
    cache_capacity] over them (1: attend; 0: free or padding), ``past_length`` int64 [1] (the
    column the first new position takes), the encoder's ``cross_key``/``cross_value`` and
    ``encoder_attention_mask``. Outputs: ``logits`` [batch_size, decoder_sequence_length, vocab]
    and their ``logsumexp`` [batch_size, decoder_sequence_length] (NaN where a position's logits are not
    all finite), and ``present_key``/``present_value``: the cache buffers with the new positions written
    in, bound by the runtime to the inputs' memory (in place).
    """

    input_ids: str
    encoder_attention_mask: str
    self_attention_mask: str
    past_length: str
    logits: str
    cache_key: tuple[str, ...]
    cache_value: tuple[str, ...]
    cross_key: tuple[str, ...]
    cross_value: tuple[str, ...]
    present_key: tuple[str, ...]
    present_value: tuple[str, ...]
    logsumexp: str


@dataclass(frozen=True)
class Geometry:
    """Model shape, read from the checkpoint config at export time."""

    vocab_size: int
    d_model: int
    d_kv: int
    num_heads: int
    num_layers: int
    num_decoder_layers: int
    d_ff: int
    feed_forward_proj: str
    tie_word_embeddings: bool


@dataclass(frozen=True)
class SpecialTokens:
    pad_token_id: int
    eos_token_id: tuple[int, ...]
    decoder_start_token_id: int


@dataclass(frozen=True)
class TokenizerSpec:
    """``kind`` is ``"tokenizers"`` (a tokenizer.json file) or ``"byt5"`` (bytes, built in)."""

    kind: str
    file: str | None
    clean_up_tokenization_spaces: bool = False


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model_type: str
    dtype: str
    geometry: Geometry
    special_tokens: SpecialTokens
    tokenizer: TokenizerSpec
    encoder: GraphSpec
    decoder: GraphSpec
    encoder_io: EncoderIO
    decoder_io: DecoderIO
    generation_config: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)  # empty: fp32 weights
    weights: WeightsSpec | None = None  # None: weights inside the graph files

    # ---- (de)serialisation -------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        def io(obj: Any) -> dict[str, Any]:
            return {k: list(v) if isinstance(v, tuple) else v for k, v in obj.__dict__.items()}

        return {
            "format_version": self.format_version,
            "model_type": self.model_type,
            "dtype": self.dtype,
            "geometry": dict(self.geometry.__dict__),
            "special_tokens": io(self.special_tokens),
            "tokenizer": dict(self.tokenizer.__dict__),
            "graphs": {
                "encoder": {**self.encoder.to_dict(), "io": io(self.encoder_io)},
                "decoder": {**self.decoder.to_dict(), "io": io(self.decoder_io)},
            },
            "generation_config": self.generation_config,
            "parity": self.parity,
            "source": self.source,
            "quantization": self.quantization,
            "weights": dict(self.weights.__dict__) if self.weights else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        def tup(obj: dict[str, Any]) -> dict[str, Any]:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}

        graphs = d["graphs"]
        return cls(
            format_version=d["format_version"],
            model_type=d["model_type"],
            dtype=d["dtype"],
            geometry=Geometry(**d["geometry"]),
            special_tokens=SpecialTokens(**tup(d["special_tokens"])),
            tokenizer=TokenizerSpec(**d["tokenizer"]),
            encoder=GraphSpec.from_dict(graphs["encoder"]),
            decoder=GraphSpec.from_dict(graphs["decoder"]),
            encoder_io=EncoderIO(**tup(graphs["encoder"]["io"])),
            decoder_io=DecoderIO(**tup(graphs["decoder"]["io"])),
            generation_config=d.get("generation_config", {}),
            parity=d.get("parity", {}),
            source=d.get("source", {}),
            quantization=d.get("quantization", {}),
            weights=WeightsSpec(**d["weights"]) if d.get("weights") else None,
        )

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def read_manifest(directory: str | Path) -> Manifest:
    """Read and check ``t5ort.json`` in ``directory``; errors name the file and the fix."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such directory; pass the OUT_DIR written by `t5ort export`.")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{path}: not found; {directory} is not a t5ort export. Create one with `t5ort export MODEL {directory}`."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc}); re-export the model with `t5ort export`.") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        older = (" (older formats' decoder graphs do not write the cache themselves; format "
                 f"{FORMAT_VERSION}'s fused attention does)") if isinstance(version, int) and version < FORMAT_VERSION else ""
        raise ArtifactError(
            f"{path}: format_version {version!r}, but this t5ort reads format_version {FORMAT_VERSION}{older}; "
            f"re-export the model with this version of `t5ort export` (t5ort export CHECKPOINT {directory} --force)."
        )
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: malformed manifest ({exc!r}); re-export the model with `t5ort export`.") from exc
    check_manifest(manifest, path)
    return manifest


def check_manifest(m: Manifest, path: Path) -> None:
    """Every tensor name the runtime will use exists in its graph's signature, one per decoder layer."""
    layers = m.geometry.num_decoder_layers
    per_layer = {"decoder": (m.decoder_io, ("cache_key", "cache_value", "cross_key", "cross_value",
                                             "present_key", "present_value")),
                 "encoder": (m.encoder_io, ("cross_key", "cross_value"))}
    for graph, (io, roles) in per_layer.items():
        for role in roles:
            if len(getattr(io, role)) != layers:
                raise ArtifactError(
                    f"{path}: {graph} io {role!r} names {len(getattr(io, role))} layers but the geometry says "
                    f"{layers}; re-export the model."
                )
    _check_geometry(m, path)
    graphs = [(m.encoder, m.encoder_io), (m.decoder, m.decoder_io)]
    for graph, names_obj in graphs:
        known = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
        for value in names_obj.__dict__.values():
            for name in value if isinstance(value, tuple) else (value,):
                if name not in known:
                    raise ArtifactError(
                        f"{path}: tensor {name!r} is not in the signature of {graph.file}; re-export the model."
                    )
    _check_self_attention_mask(m, path)


def _check_self_attention_mask(m: Manifest, path: Path) -> None:
    """The decoder's self-attention mask spans the cache buffer's columns: its own named axis."""
    spec = m.decoder.tensor(m.decoder_io.self_attention_mask)
    if spec.dtype != "int64" or len(spec.shape) != 2 or spec.shape[1] != CAPACITY_AXIS:
        raise ArtifactError(
            f"{path}: decoder input {spec.name!r} is {spec.dtype} {list(spec.shape)}; the self-attention mask must "
            f"be int64 [batch_size, {CAPACITY_AXIS!r}]; re-export the model."
        )


def _check_geometry(m: Manifest, path: Path) -> None:
    """The geometry must agree with the shapes the graphs declare (vocab, d_model, heads, d_kv)."""
    g, io = m.geometry, m.decoder_io
    expected = {
        (m.decoder.file, io.logits): {-1: g.vocab_size},
        (m.encoder.file, m.encoder_io.hidden_states): {-1: g.d_model},
    }
    for name in io.cache_key + io.cross_value:
        expected[(m.decoder.file, name)] = {1: g.num_heads, 3: g.d_kv}
    for name in m.encoder_io.cross_key + m.encoder_io.cross_value:
        expected[(m.encoder.file, name)] = {1: g.num_heads, 3: g.d_kv}
    graphs = {m.encoder.file: m.encoder, m.decoder.file: m.decoder}
    for (file, name), dims in expected.items():
        try:
            shape = graphs[file].tensor(name).shape
        except KeyError:
            continue  # a missing name is reported by the caller
        for axis, size in dims.items():
            if not -len(shape) <= axis < len(shape) or isinstance(shape[axis], int) and shape[axis] != size:
                raise ArtifactError(
                    f"{path}: geometry does not match {file}: tensor {name!r} has shape {list(shape)}, "
                    f"expected {size} on axis {axis}; re-export the model."
                )
