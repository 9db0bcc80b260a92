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
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def quantize(src: Path, dst: Path) -> None:
        quantize_dynamic(src, dst, per_channel=False, weight_type=QuantType.QInt8,
                         extra_options={"EnableSubgraph": True},
                         use_external_data_format=True)  # no 2 GiB protobuf cap; store_weights gathers it

    quantized, work = rewrite_graphs(staging, manifest, quantize, "int8")
    fidelity = measure_fidelity(staging, work, fidelity_steps)
    quantized = Manifest.from_dict({**quantized.to_dict(), "quantization": {"weights": "int8", "method": METHOD,
                                                                          "fidelity": fidelity}})
    replace_graphs(work, staging, manifest)
    return quantized


def rewrite_graphs(staging: Path, manifest: Manifest, convert: Callable[[Path, Path], None],
                   name: str) -> tuple[Manifest, Path]:
    """``convert(src, dst)`` each graph of ``staging`` into ``staging/_<name>``, gather its weights into a
    weights.bin there and write a loadable export beside them; returns its manifest and that directory
    (see :func:`replace_graphs` to move the new graphs into place)."""
    from .exporter import graph_spec

    work = staging / f"_{name}"
    work.mkdir()
    files = (manifest.encoder.file, manifest.decoder.file)
    for file in files:
        convert(staging / file, work / file)
    store_weights(work, list(files))
    d = manifest.to_dict()
    encoder, decoder = graph_spec(work / manifest.encoder.file), graph_spec(work / manifest.decoder.file)
    dtype = decoder.tensor(manifest.decoder_io.past_self_key[0]).dtype  # the caches' element type
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
    for file in (manifest.encoder.file, manifest.decoder.file, WEIGHTS_FILE):
        (work / file).replace(staging / file)
    shutil.rmtree(work)


def measure_fidelity(fp32_dir: Path, int8_dir: Path, steps: int) -> dict:
    """Teacher-force the fp32 greedy tokens through the int8 graphs: top-1 agreement and max logit difference."""
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
        "reference": "fp32 ONNX greedy tokens, teacher-forced through the int8 graphs",
    }
