"""T5 checkpoint -> encoder and decoder ONNX graphs, tokenizer and manifest, checked against PyTorch.

The layout: optimum's encoder graph with the decoder layers' cross-attention
keys/values appended (cross_kv.py), and optimum's with-past decoder, which runs
every step, the first one with an empty self-attention cache; beside them, the
in-flight step graph (step_decoder.py), which reads the self-attention cache in
place and that in-flight batches run. Weights live once in ``weights.bin``
(weights.py), shared by all three graphs. Measured on the t5-small-shaped benchmark model
against optimum's merged decoder (an If over a first-step and a with-past
branch): see the README's memory table.
"""

from __future__ import annotations

import copy
import errno
import json
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Callable

from ..runtime.errors import ExportError
from .configs import custom_onnx_configs
from .cross_kv import append_cross_kv, cross_kv_names
from .step_decoder import STEP_FILE, check_step_graph, export_step_graph, step_io_names, step_tolerance
from .weights import store_weights, weights_spec
from ..runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    DecoderIO,
    EncoderIO,
    StepIO,
    Geometry,
    GraphSpec,
    Manifest,
    SpecialTokens,
    TensorSpec,
    TokenizerSpec,
    check_manifest,
    file_sha256,
)

SUPPORTED_MODEL_TYPES = ("t5", "mt5", "longt5", "umt5")
ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_with_past_model.onnx"
TASK = "text2text-generation-with-past"
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
        say("exporting ONNX graphs with optimum")
        _export_graphs(torch_model, staging)
        manifest = _build_manifest(torch_model, tokenizer, staging, source=str(model))
        check_manifest(manifest, staging / MANIFEST_NAME)
        manifest.write(staging)
        say(f"checking {check_steps} decoding steps against PyTorch fp32 and float64")
        from . import parity as gate

        parity = gate.gate_parity(torch_model, staging, steps=check_steps, atol=atol, rel_tol=rel_tol, k=gate.K,
                                  say=say)
        say("checking the in-flight step graph against the with-past decoder")
        parity["step_graph"] = check_step_graph(staging, steps=check_steps, tolerance=step_tolerance(parity))
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
    """optimum writes the encoder and two decoder graphs before t5ort keeps one: budget ~4.5x the fp32 weights."""
    weights = sum(p.numel() for p in torch_model.parameters()) * 4
    needed, free = int(4.5 * weights), shutil.disk_usage(where).free
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
    torch_model = AutoModelForSeq2SeqLM.from_pretrained(str(model), dtype="float32").eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model))
    except (OSError, ValueError, TypeError):
        tokenizer = None  # an ids-only export: generate(input_ids=...) still works
    return torch_model, tokenizer


def _export_graphs(torch_model, staging: Path) -> None:
    import torch
    from optimum.exporters.onnx import onnx_export_from_model

    raw = staging / "_optimum"
    with warnings.catch_warnings():
        # The tracer warns about Python control flow that optimum's T5 config accounts for.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # optimum mutates the model it exports (config flags); keep ours clean for the parity check.
        onnx_export_from_model(copy.deepcopy(torch_model), raw, task=TASK, do_validation=False, no_post_process=True,
                               custom_onnx_configs=custom_onnx_configs(torch_model))
    for stem in (ENCODER_FILE, DECODER_FILE):
        files = sorted(raw.glob(stem + "*"))  # the graph and any external-data file beside it
        if not (raw / stem).is_file():
            raise ExportError(f"optimum wrote no {stem} (found {sorted(p.name for p in raw.iterdir())}).")
        for f in files:
            f.rename(staging / f.name)
    shutil.rmtree(raw)
    if getattr(torch_model.config, "encoder_attention_type", None) == "transient-global":
        _reshape_zero_means_zero(staging / ENCODER_FILE)
    append_cross_kv(staging / ENCODER_FILE, torch_model)
    export_step_graph(torch_model, staging / STEP_FILE)
    store_weights(staging, [ENCODER_FILE, DECODER_FILE, STEP_FILE])


def _reshape_zero_means_zero(path: Path) -> None:
    """Give every Reshape PyTorch's meaning of a 0 in the target shape: a dimension of size 0.

    ONNX's default (allowzero=0) reads 0 as "copy the input's dimension". LongT5's
    transient-global encoder reshapes to [batch, n_blocks, ...] where n_blocks is 0
    for inputs shorter than one global block; with the default, those inputs fail.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "Reshape":
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("allowzero", 1))
    onnx.save(model, str(path))


def graph_spec(path: Path) -> GraphSpec:
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


def _decoder_io(layers: int) -> DecoderIO:
    """optimum's tensor names for a seq2seq decoder with past (checked against the graph by check_manifest)."""

    def names(prefix: str, part: str, kind: str) -> tuple[str, ...]:
        return tuple(f"{prefix}.{i}.{part}.{kind}" for i in range(layers))

    return DecoderIO(
        input_ids="input_ids",
        encoder_attention_mask="encoder_attention_mask",
        self_attention_mask="attention_mask",  # configs.py adds it; optimum names it so in the with-past graph
        logits="logits",
        past_self_key=names("past_key_values", "decoder", "key"),
        past_self_value=names("past_key_values", "decoder", "value"),
        past_cross_key=names("past_key_values", "encoder", "key"),
        past_cross_value=names("past_key_values", "encoder", "value"),
        present_self_key=names("present", "decoder", "key"),
        present_self_value=names("present", "decoder", "value"),
    )


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
    cross_key, cross_value = cross_kv_names(int(config.num_decoder_layers))
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
        encoder_io=EncoderIO(input_ids="input_ids", attention_mask="attention_mask", hidden_states="last_hidden_state",
                             cross_key=cross_key, cross_value=cross_value),
        decoder_io=_decoder_io(geometry.num_decoder_layers),
        generation_config=generation_config,
        source={
            "model": source,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
            "task": TASK,
            "export_id": uuid.uuid4().hex,
            "checkpoint_sha256": checkpoint_fingerprint(torch_model),
        },
        weights=weights_spec(staging),
        step=graph_spec(staging / STEP_FILE),
        step_io=StepIO(**step_io_names(geometry.num_decoder_layers)),
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
