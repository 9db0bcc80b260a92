"""``--quantize int8``: dynamic int8 weight quantization of both graphs, with its fidelity measured.

Weights of every MatMul and Gather (embeddings and the lm_head included) become
int8 with one scale per tensor; activations stay float32 and are quantized on
the fly (onnxruntime's ``quantize_dynamic``). Chosen by measurement on the
t5-small-shaped model (README, int8): one scale per tensor steps 10% faster at
batch 1 than one per output channel (3.10 vs 3.44 ms/step) and as fast at batch
16, with the same top-1 agreement; onnxruntime's 8-bit block-wise MatMulNBits
was as fast at batch 1 and 35% slower at batch 16. The int8 graphs'
weights are then gathered into one ``weights.bin`` like the fp32 ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.manifest import Manifest
from .parity import check_inputs
from .weights import WEIGHTS_FILE, store_weights, weights_spec

METHOD = "onnxruntime quantize_dynamic: int8 weights (QInt8), one scale per weight tensor, float32 activations"


def quantize_int8(staging: Path, manifest: Manifest, fidelity_steps: int = 32) -> Manifest:
    """Replace the fp32 graphs in ``staging`` by int8 ones; return the manifest with the fidelity figures."""
    quantized, work = rewrite_graphs(staging, manifest, _int8_convert, "int8")
    fidelity = measure_fidelity(staging, work, fidelity_steps)
    quantized = Manifest.from_dict({**quantized.to_dict(), "quantization": {"weights": "int8", "method": METHOD,
                                                                          "fidelity": fidelity}})
    replace_graphs(work, staging, manifest)
    return quantized


def _int8_convert(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, per_channel=False, weight_type=QuantType.QInt8, extra_options={"EnableSubgraph": True},
                     use_external_data_format=True)  # no 2 GiB protobuf cap; store_weights gathers it


# ---- int4 ------------------------------------------------------------------------------------------

# Chosen by measurement (t5-small shape, 2 threads, batch 1, side by side; README, int4): blocks of 128
# (32 and 64 were 0.74-0.99x int8's speed, 128 and 256 1.04-1.37x, 256 no faster than 128), accuracy level
# 4 (int8 activations; level 1, float32 compute, ran at 0.50-0.58x int8), the lm_head in 4 bits (float32
# lm_head: 0.63x int8), the word embeddings in 4 bits too (as fast, weights.bin 93 -> 38 MB; teacher-forced
# top-1 agreement 100% either way, the bundled model's held-out accuracy 100% either way).
INT4_BLOCK_SIZE = 128
INT4_ACCURACY_LEVEL = 4
INT4_LM_HEAD = True
INT4_EMBEDDINGS = True
METHOD_INT4 = ("onnxruntime MatMulNBitsQuantizer: 4-bit symmetric weights of every MatMul with a constant "
               "weight, blocks of {block} along the input axis, accuracy_level {level}, lm_head {lm_head}, "
               "word embeddings {embeddings}")


def _int4_excluded(model, vocab_size: int, lm_head: bool, embeddings: bool) -> list[str]:
    """Names of the nodes that stay float32: the lm_head MatMul (weight [d_model, vocab]) unless ``lm_head``,
    and every Gather except the word embedding's (weight [vocab, d_model]) unless ``embeddings``."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    excluded = []
    for node in model.graph.node:
        dims = [shapes[name] for name in node.input if name in shapes]
        if node.op_type == "MatMul" and not lm_head and any(d[-1:] == (vocab_size,) for d in dims):
            excluded.append(node.name)
        if node.op_type == "Gather" and not (embeddings and any(d[:1] == (vocab_size,) for d in dims)):
            excluded.append(node.name)
    return excluded


def int4_converter(vocab_size: int, *, block_size: int = INT4_BLOCK_SIZE, accuracy_level: int = INT4_ACCURACY_LEVEL,
                   lm_head: bool = INT4_LM_HEAD, embeddings: bool = INT4_EMBEDDINGS,
                   int8_graphs: tuple[str, ...] = ()) -> Callable[[Path, Path], None]:
    """``convert(src, dst)``: one graph's MatMul weights (and optionally embeddings) to 4 bits (MatMulNBits,
    GatherBlockQuantized), the rest untouched; written with external data for :func:`store_weights`.
    Graph files named in ``int8_graphs`` get :func:`quantize_int8`'s int8 weights instead."""

    def convert(src: Path, dst: Path) -> None:
        import logging

        if src.name in int8_graphs:
            return _int8_convert(src, dst)

        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        model = onnx.load(str(src))  # external data (weights.bin) loaded
        quantizer = MatMulNBitsQuantizer(
            model, bits=4, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level,
            nodes_to_exclude=_int4_excluded(model, vocab_size, lm_head, embeddings),
            op_types_to_quantize=("MatMul", "Gather") if embeddings else ("MatMul",),
        )
        logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        level = logger.level
        logger.setLevel(logging.WARNING)  # it logs every node at INFO
        try:
            quantizer.process()
        finally:
            logger.setLevel(level)
        onnx.save(quantizer.model.model, str(dst), save_as_external_data=True, location=dst.name + ".data")

    return convert


def quantize_int4(staging: Path, manifest: Manifest, fidelity_steps: int = 32) -> Manifest:
    """Replace the fp32 graphs in ``staging`` by 4-bit-weight ones; return the manifest with the fidelity figures."""
    convert = int4_converter(manifest.geometry.vocab_size)
    quantized, work = rewrite_graphs(staging, manifest, convert, "int4")
    fidelity = measure_fidelity(staging, work, fidelity_steps, "int4")
    method = METHOD_INT4.format(block=INT4_BLOCK_SIZE, level=INT4_ACCURACY_LEVEL,
                                lm_head="4-bit" if INT4_LM_HEAD else "float32",
                                embeddings="4-bit" if INT4_EMBEDDINGS else "float32")
    quantized = Manifest.from_dict({**quantized.to_dict(), "quantization": {"weights": "int4", "method": method,
                                                                          "fidelity": fidelity}})
    replace_graphs(work, staging, manifest)
    return quantized


def graph_files(manifest: Manifest) -> tuple[str, ...]:
    """The export's graph files: encoder and decoder."""
    return (manifest.encoder.file, manifest.decoder.file)


def rewrite_graphs(staging: Path, manifest: Manifest, convert: Callable[[Path, Path], None],
                   name: str) -> tuple[Manifest, Path]:
    """``convert(src, dst)`` each graph of ``staging`` into ``staging/_<name>``, gather its weights into a
    weights.bin there and write a loadable export beside them; returns its manifest and that directory
    (see :func:`replace_graphs` to move the new graphs into place)."""
    from .trace import graph_spec

    work = staging / f"_{name}"
    work.mkdir()
    files = graph_files(manifest)
    for file in files:
        convert(staging / file, work / file)
    store_weights(work, list(files))
    d = manifest.to_dict()
    encoder, decoder = graph_spec(work / manifest.encoder.file), graph_spec(work / manifest.decoder.file)
    dtype = decoder.tensor(manifest.decoder_io.cache_key[0]).dtype  # the caches' element type
    rewritten = Manifest.from_dict({
        **d,
        "dtype": dtype,
        "graphs": {"encoder": {**encoder.to_dict(), "io": d["graphs"]["encoder"]["io"]},
                   "decoder": {**decoder.to_dict(), "io": d["graphs"]["decoder"]["io"]}},
        "weights": weights_spec(work).__dict__,
    })
    for extra in staging.iterdir():  # tokenizer and generation defaults, so the new graphs load on their own
        if extra.is_file() and extra.suffix != ".onnx" and extra.name != WEIGHTS_FILE:
            shutil.copy(extra, work / extra.name)
    rewritten.write(work)
    return rewritten, work


def replace_graphs(work: Path, staging: Path, manifest: Manifest) -> None:
    """Move the rewritten graphs and their weights.bin from ``work`` over those in ``staging``."""
    for file in (*graph_files(manifest), WEIGHTS_FILE):
        (work / file).replace(staging / file)
    shutil.rmtree(work)


def measure_fidelity(fp32_dir: Path, int8_dir: Path, steps: int, name: str = "int8") -> dict:
    """Teacher-force the fp32 greedy tokens through the quantized (``name``) graphs: top-1 agreement and
    max logit difference."""
    from ..runtime.model import load

    fp32, int8 = load(fp32_dir), load(int8_dir)
    ids, mask = check_inputs(fp32.vocab_size, seed=1)
    reference = fp32.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps)
    scored = int8.score(input_ids=ids, attention_mask=mask, target_ids=reference.sequences[:, 1:])
    agree = scored.logits.argmax(-1) == reference.logits.argmax(-1)
    return {
        "top1_agreement": float(agree.mean()),
        "max_abs_diff_vs_fp32": float(np.abs(scored.logits - reference.logits).max()),
        "max_abs_logit_fp32": float(np.abs(reference.logits).max()),
        "steps": steps,
        "rows": int(ids.shape[0]),
        "reference": f"fp32 ONNX greedy tokens, teacher-forced through the {name} graphs",
    }
