"""T5 checkpoint -> encoder and decoder ONNX graphs, tokenizer and manifest, checked against PyTorch.

The graphs are t5ort's own (:mod:`t5ort.export.modules`, traced by :mod:`t5ort.export.trace`): the
encoder, which also computes every decoder layer's cross-attention keys/values, and one decoder that
keeps the self-attention cache in place and runs every decoding path. Weights live once in
``weights.bin`` (weights.py), shared by both graphs. transformers is used to load the checkpoint
(its config, weights and tokenizer) and, in the parity gate, as the reference; no module of it is traced.
"""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from ..runtime.errors import ExportError
from .modules import T5Spec
from .trace import (DECODER_FILE, ENCODER_FILE, decoder_io_names, encoder_io_names, export_decoder, export_encoder,
                    graph_spec)
from .weights import store_weights, weights_spec
from ..runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    DecoderIO,
    EncoderIO,
    Geometry,
    Manifest,
    SpecialTokens,
    TokenizerSpec,
    check_manifest,
)

SUPPORTED_MODEL_TYPES = ("t5", "mt5", "longt5", "umt5")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "special_tokens_map.json")
QUANTIZE = (None, "int8", "int4")
DTYPES = ("float32", "float16")


def export_model(
    model: str | Path,
    out_dir: str | Path,
    *,
    force: bool,
    atol: float,
    rel_tol: float,
    check_steps: int,
    quantize: str | None,
    dtype: str = "float32",
    progress: Callable[[str], None] | None,
) -> Manifest:
    """See :func:`t5ort.export.export`."""
    say = progress or (lambda message: None)
    out_dir = Path(out_dir)
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize={quantize!r} is not supported; use one of {QUANTIZE}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {DTYPES}.")
    if dtype == "float16" and quantize:
        raise ValueError(f"dtype='float16' and quantize={quantize!r} exclude each other: choose one.")
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} already exists; choose another OUT_DIR or pass force=True (--force) to replace it.")
    if check_steps < 1:
        raise ValueError(f"check_steps must be >= 1, got {check_steps}.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        say(f"loading {model}")
        torch_model, tokenizer = _load(model)
        _check_disk_space(torch_model, out_dir.parent)
        say("exporting the encoder and decoder graphs")
        _export_graphs(torch_model, staging)
        manifest = _build_manifest(torch_model, tokenizer, staging, source=str(model))
        check_manifest(manifest, staging / MANIFEST_NAME)
        manifest.write(staging)
        say(f"checking {check_steps} decoding steps against PyTorch fp32 and float64")
        from . import parity as gate

        parity = gate.gate_parity(torch_model, staging, steps=check_steps, atol=atol, rel_tol=rel_tol, k=gate.K,
                                  say=say)
        manifest = Manifest.from_dict({**manifest.to_dict(), "parity": parity})
        if quantize == "int8":
            say("quantizing weights to int8 and measuring its fidelity against fp32")
            from .quantize import quantize_int8

            manifest = quantize_int8(staging, manifest)
        if quantize == "int4":
            say("quantizing weights to 4 bits and measuring its fidelity against fp32")
            from .quantize import quantize_int4

            manifest = quantize_int4(staging, manifest)
        if dtype == "float16":
            say(f"converting to float16 and checking {check_steps} steps against PyTorch fp32")
            from .fp16 import to_fp16

            manifest = to_fp16(staging, manifest, torch_model, check_steps)
        manifest.write(staging)
        _replace_dir(staging, out_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise ExportError(f"not enough disk space in {out_dir.parent} to export {model}; free some and retry.") from exc
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"wrote {out_dir} ({_parity_summary(parity)})")
    if "fidelity" in manifest.quantization:
        fidelity = manifest.quantization["fidelity"]
        say(f"{manifest.quantization['weights']} vs fp32: top-1 agreement {fidelity['top1_agreement']:.1%}, "
            f"max |logit diff| {fidelity['max_abs_diff_vs_fp32']:.3g} over {fidelity['steps']} teacher-forced steps")
    if "parity_fp16" in manifest.quantization:
        half = manifest.quantization["parity_fp16"]
        say(f"fp16 graphs vs PyTorch fp32: max |logit diff| {half['max_abs_diff']:.2e} <= {half['tolerance']:.2e}")
    return manifest


def _parity_summary(parity: dict) -> str:
    """One line on what the gate measured and by which rule it passed."""
    fp32 = f"fp32 graphs vs PyTorch fp32: max |logit diff| {parity['max_abs_diff']:.2e}"
    if parity.get("max_abs_diff_vs_float64") is None:
        return f"{fp32} <= {parity['tolerance']:.2e}; no float64 reference: {parity.get('float64_missing')}"
    vs64 = (f"vs float64 {parity['max_abs_diff_vs_float64']:.2e}, PyTorch fp32's own "
            f"{parity['fp32_max_abs_diff_vs_float64']:.2e}, ratio {parity['ratio']:.2f}")
    if parity["passed_by"] == "absolute":
        return f"{fp32} <= {parity['tolerance']:.2e}; {vs64}"
    return f"{fp32}; {vs64} <= k = {parity['k']:g}"


def _check_disk_space(torch_model, where: Path) -> None:
    """Each graph is written with its weights inside before store_weights gathers them: budget ~2.5x the
    fp32 weights (the two graphs, then weights.bin)."""
    weights = sum(p.numel() for p in torch_model.parameters()) * 4
    needed, free = int(2.5 * weights), shutil.disk_usage(where).free
    if free < needed:
        raise ExportError(
            f"not enough disk space in {where}: the export needs about {needed / 2**20:.0f} MiB "
            f"while writing, {free / 2**20:.0f} MiB are free."
        )


def _load(model: str | Path):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(model))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{model}: cannot read a model config ({exc}); pass a T5 checkpoint directory.") from exc
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(
            f"{model}: model_type {config.model_type!r} is not supported; t5ort exports {SUPPORTED_MODEL_TYPES}."
        )
    torch_model = load_float32(model)
    tokenizer = None  # an ids-only export: generate(input_ids=...) still works
    local = Path(model)
    if not local.is_dir() or any((local / f).is_file() for f in TOKENIZER_FILES):
        # transformers 5 makes a default tokenizer for a directory that has none: only load one that is there
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model))
        except (OSError, ValueError, TypeError):
            pass
    return torch_model, tokenizer


def load_float32(checkpoint: str | Path):
    """The checkpoint as a float32 PyTorch model in eval mode, on any supported transformers (``dtype=`` from
    4.56 on, ``torch_dtype=`` before)."""
    import torch
    import transformers
    from transformers import AutoModelForSeq2SeqLM

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    return AutoModelForSeq2SeqLM.from_pretrained(str(checkpoint), **{key: torch.float32}).eval()


def _export_graphs(torch_model, staging: Path) -> None:
    spec = T5Spec.from_config(torch_model.config)
    export_encoder(torch_model, spec, staging / ENCODER_FILE)
    export_decoder(torch_model, spec, staging / DECODER_FILE)
    store_weights(staging, [ENCODER_FILE, DECODER_FILE])


def _tokenizer_spec(tokenizer, staging: Path) -> TokenizerSpec:
    if tokenizer is None:
        return TokenizerSpec(kind="none", file=None)
    if type(tokenizer).__name__ == "ByT5Tokenizer":
        return TokenizerSpec(kind="byt5", file=None)
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(
            f"{type(tokenizer).__name__} has no fast (tokenizer.json) form; install sentencepiece and protobuf "
            "so transformers can convert it, or save a tokenizer.json beside the checkpoint."
        )
    tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
    clean = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
    return TokenizerSpec(kind="tokenizers", file="tokenizer.json", clean_up_tokenization_spaces=clean)


def _build_manifest(torch_model, tokenizer, staging: Path, source: str) -> Manifest:
    import onnxruntime
    import torch
    import transformers

    config = torch_model.config
    gen = torch_model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else config.eos_token_id
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    generation_config = {k: v for k, v in gen.to_diff_dict().items() if k != "transformers_version"}
    (staging / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    encoder = graph_spec(staging / ENCODER_FILE)
    decoder = graph_spec(staging / DECODER_FILE)
    geometry = Geometry(
        vocab_size=int(config.vocab_size),
        d_model=int(config.d_model),
        d_kv=int(config.d_kv),
        num_heads=int(config.num_heads),
        num_layers=int(config.num_layers),
        num_decoder_layers=int(config.num_decoder_layers),
        d_ff=int(config.d_ff),
        feed_forward_proj=str(config.feed_forward_proj),
        tie_word_embeddings=bool(config.tie_word_embeddings),
    )
    return Manifest(
        format_version=FORMAT_VERSION,
        model_type=config.model_type,
        dtype="float32",
        geometry=geometry,
        special_tokens=SpecialTokens(
            pad_token_id=int(config.pad_token_id),
            eos_token_id=eos_ids,
            decoder_start_token_id=int(config.decoder_start_token_id),
        ),
        tokenizer=_tokenizer_spec(tokenizer, staging),
        encoder=encoder,
        decoder=decoder,
        encoder_io=EncoderIO(**encoder_io_names(geometry.num_decoder_layers)),
        decoder_io=DecoderIO(**decoder_io_names(geometry.num_decoder_layers)),
        generation_config=generation_config,
        source={
            "model": source,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
            "export_id": uuid.uuid4().hex,
            "checkpoint_sha256": checkpoint_fingerprint(torch_model),
        },
        weights=weights_spec(staging),
    )



def checkpoint_fingerprint(torch_model) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, bytes, in name order): `t5ort check`
    compares it to tell the export's own checkpoint from another."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(torch_model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _replace_dir(staging: Path, out_dir: Path) -> None:
    """Move the finished export into place; an existing ``out_dir`` is swapped out, then removed."""
    staging.chmod(0o755)  # mkdtemp makes it 0700
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out_dir)
