"""The systems that ``compare.py`` times, each run inside its own worker process.

A worker loads one system, then answers requests from the parent over a pipe
(one at a time, so only one system runs at any moment): time a whole generate
call, time the first token, run the cost-growth stream, report its memory. Every
system returns the raw logits of every step, as a user would get them (numpy
arrays; turning tensors/StorageViews into numpy is part of the timed call).

Also here: preparing the artifacts (exports and conversions, cached in the work
directory, each made in a throwaway process so that no worker's peak RSS holds an
export), the workloads' inputs and the memory-bandwidth floor.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _model import (NEW_TOKENS, T5_SMALL, checkpoint, current_t5ort_export, input_ids, ort_session_options,
                    proc_status_mb, say)

# ---- workloads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    batch: int
    num_beams: int
    new_tokens: int
    ragged: bool = False  # rows of different lengths, right-padded

    @property
    def rows(self) -> int:
        """Decoder rows per step: batch x beams."""
        return self.batch * self.num_beams


GROWTH_TOKENS = 512  # compare.py --growth-tokens / --quick change it
WORKLOADS = {
    "greedy-1": Workload("greedy-1", "greedy, batch 1, 32 input tokens", 1, 1, NEW_TOKENS),
    "ragged-16": Workload("ragged-16", "greedy, batch 16, ragged inputs of 8..64 tokens", 16, 1, NEW_TOKENS,
                          ragged=True),
    "beam4-1": Workload("beam4-1", "beam search, 4 beams, batch 1, 32 input tokens", 1, 4, NEW_TOKENS),
    "growth": Workload("growth", "cost growth: t5ort fp32 greedy, batch 1, 32 input tokens, each step timed", 1, 1,
                       GROWTH_TOKENS),
}


def inputs(workload: Workload) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 [batch, L], right-padded with 0 for the ragged workload."""
    if not workload.ragged:
        ids = input_ids(workload.batch)
        return ids, np.ones_like(ids)
    rng = np.random.default_rng(1)
    lengths = rng.integers(8, 65, size=workload.batch)
    ids = np.zeros((workload.batch, int(lengths.max())), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, 32000, size=n)
        mask[row, :n] = 1
    return ids, mask


# ---- artifacts ---------------------------------------------------------------------------------------

OPTIMUM_LOADED = ("encoder_model.onnx", "decoder_model_merged.onnx")  # what ORTModelForSeq2SeqLM opens


def artifact_dir(system: str, workdir: Path) -> Path:
    return {
        "pytorch": workdir / "checkpoint",
        "t5ort-fp32": workdir / "t5ort",  # shared with compare_pytorch.py
        "t5ort-int8": workdir / "t5ort-int8",
        "optimum": workdir / "optimum",  # shared with layouts.py (same main_export call)
        "ct2-fp32": workdir / "ct2-fp32",
        "ct2-int8": workdir / "ct2-int8",
    }[system]


def artifact_ready(system: str, workdir: Path) -> bool:
    d = artifact_dir(system, workdir)
    if system.startswith("t5ort"):
        return current_t5ort_export(d)
    need = {
        "pytorch": ["config.json"],
        "t5ort-fp32": ["t5ort.json"],
        "t5ort-int8": ["t5ort.json"],
        "optimum": list(OPTIMUM_LOADED),
        "ct2-fp32": ["model.bin", "shared_vocabulary.json"],
        "ct2-int8": ["model.bin", "shared_vocabulary.json"],
    }[system]
    return all((d / f).is_file() for f in need)


def artifact_files(system: str, workdir: Path) -> list[Path]:
    """The files the system reads at load time (optimum's directory also holds the split decoders, unused)."""
    d = artifact_dir(system, workdir)
    if system == "optimum":
        return [d / f for f in (*OPTIMUM_LOADED, "config.json", "generation_config.json") if (d / f).is_file()]
    return [p for p in d.rglob("*") if p.is_file()]


def _t5ort_export(workdir: Path, out: Path, quantize: str | None) -> None:
    import t5ort

    t5ort.export(checkpoint(workdir), out, force=True, quantize=quantize,
                 progress=lambda m: say(f"t5ort export{' ' + quantize if quantize else ''}: {m}"))


class _StubTokenizer:
    """What CTranslate2's T5 loader asks of a tokenizer: the random checkpoint has none.

    Token i is named ``<pad>``, ``</s>``, ``<unk>`` for 0, 1, 2 (T5's special ids) and ``t{i}`` otherwise,
    one name per id of the model's vocabulary; the converter writes them to shared_vocabulary.json.
    """

    pad_token, eos_token, unk_token = "<pad>", "</s>", "<unk>"

    def __init__(self, size: int):
        self.tokens = ["<pad>", "</s>", "<unk>"] + [f"t{i}" for i in range(3, size)]

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.tokens[i]


def _ct2_convert(workdir: Path, out: Path, quantization: str | None) -> None:
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return _StubTokenizer(T5_SMALL["vocab_size"])

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"converting with CTranslate2 ({quantization or 'float32'}) to {out}")
    Converter(str(checkpoint(workdir))).convert(str(tmp), quantization=quantization, force=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def prepare(system: str, workdir: str) -> None:
    """Make ``system``'s artifact in the work directory (run in a throwaway process)."""
    workdir = Path(workdir)
    out = artifact_dir(system, workdir)
    if system == "pytorch":
        checkpoint(workdir)
    elif system == "t5ort-fp32":
        _t5ort_export(workdir, out, None)
    elif system == "t5ort-int8":
        _t5ort_export(workdir, out, "int8")
    elif system == "optimum":
        from optimum.exporters.onnx import main_export

        say(f"exporting with optimum to {out}")
        main_export(str(checkpoint(workdir)), out, task="text2text-generation-with-past", do_validation=False)
    elif system == "ct2-fp32":
        _ct2_convert(workdir, out, None)
    elif system == "ct2-int8":
        _ct2_convert(workdir, out, "int8")


# ---- memory ------------------------------------------------------------------------------------------


def openblas_info() -> dict[str, str]:
    """numpy's OpenBLAS: the kernel it runs and its thread count (asked through ctypes; no threadpoolctl here)."""
    import ctypes

    paths = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                    if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        info = {}
        for prefix in ("scipy_openblas_", "openblas_", "scipy_openblas64_"):
            for suffix in ("64_", ""):
                try:
                    corename = getattr(lib, f"{prefix}get_corename{suffix}")
                    threads = getattr(lib, f"{prefix}get_num_threads{suffix}")
                except AttributeError:
                    continue
                corename.restype = ctypes.c_char_p
                info = {"kernel": corename().decode(), "threads": str(threads()), "library": Path(path).name}
                return info
    return {"kernel": "unknown", "threads": "unknown", "library": ", ".join(Path(p).name for p in paths) or "?"}


# ---- the systems -------------------------------------------------------------------------------------


def _first_step(logits: np.ndarray | None) -> np.ndarray | None:
    """Step 0 of [rows, steps, vocab] raw logits: [rows, vocab]."""
    return None if logits is None else np.ascontiguousarray(logits[:, 0, :])


class System:
    """One system loaded in this worker. ``generate`` times one whole call and returns its outputs."""

    def generate(self, w: Workload, ids: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray | None, np.ndarray]:
        """(seconds, raw logits [rows, steps, vocab] or None if the system gives none, sequences [rows, steps])."""
        raise NotImplementedError

    def first_token(self, w: Workload, ids: np.ndarray, mask: np.ndarray) -> float:
        """Seconds to the first new token; default: a generate call with max_new_tokens=1."""
        one = Workload(w.name, w.title, w.batch, w.num_beams, 1, w.ragged)
        return self.generate(one, ids, mask)[0]


class T5ort(System):
    def __init__(self, directory: Path, threads: int):
        import t5ort

        self.rt = t5ort.load(directory, threads=threads)

    def generate(self, w, ids, mask):
        start = time.perf_counter()
        res = self.rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=w.new_tokens,
                               min_new_tokens=w.new_tokens, num_beams=w.num_beams, output_logits=True)
        seconds = time.perf_counter() - start
        return seconds, res.logits, res.sequences[:, -w.new_tokens:]

    def first_token(self, w, ids, mask):
        if w.num_beams > 1:  # stream() is greedy/sampling only
            return super().first_token(w, ids, mask)
        start = time.perf_counter()
        events = self.rt.stream(input_ids=ids, attention_mask=mask, max_new_tokens=w.new_tokens,
                                min_new_tokens=w.new_tokens)
        next(events)
        seconds = time.perf_counter() - start
        events.close()
        return seconds

    def stream_step_times(self, w, ids, mask) -> list[float]:
        """Seconds of each step of one streamed greedy run (step 0 includes the encoder)."""
        times = []
        last = time.perf_counter()
        for _event in self.rt.stream(input_ids=ids, attention_mask=mask, max_new_tokens=w.new_tokens,
                                     min_new_tokens=w.new_tokens):
            now = time.perf_counter()
            times.append(now - last)
            last = now
        return times

    def bare(self, w, ids, mask) -> list[float]:
        """The decoder session alone: encode, then ``rt.graphs.step`` ``new_tokens`` times on a fixed token,
        no search, no processors, nothing kept. Returns [encoder + start seconds, step seconds...]."""
        g = self.rt.graphs
        start = time.perf_counter()
        state = g.start(g.expand(g.encode(ids, mask), w.num_beams))
        tokens = np.zeros(w.rows, dtype=np.int64)  # decoder start token
        times = [time.perf_counter() - start]
        for _ in range(w.new_tokens):
            t = time.perf_counter()
            _logits, state = g.step(tokens, state)
            times.append(time.perf_counter() - t)
        return times


class HFGenerate(System):
    """transformers' generate, on PyTorch or on optimum's ONNX Runtime model."""

    def __init__(self, model):
        import torch

        self.torch = torch
        self.model = model

    def generate(self, w, ids, mask):
        torch = self.torch
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(ids_t, attention_mask=mask_t, max_new_tokens=w.new_tokens,
                                      min_new_tokens=w.new_tokens, num_beams=w.num_beams, do_sample=False,
                                      output_logits=True, return_dict_in_generate=True)
            logits = torch.stack(out.logits, dim=1).numpy()
        seconds = time.perf_counter() - start
        return seconds, logits, out.sequences[:, -w.new_tokens:].numpy()


def pytorch_system(directory: Path, threads: int) -> System:
    import torch
    from transformers import T5ForConditionalGeneration

    torch.set_num_threads(threads)
    return HFGenerate(T5ForConditionalGeneration.from_pretrained(directory).eval())


def optimum_system(directory: Path, threads: int) -> System:
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    torch.set_num_threads(threads)  # generate()'s own tensor work (logits processors, stacking)
    model = ORTModelForSeq2SeqLM.from_pretrained(directory, provider="CPUExecutionProvider",
                                                 session_options=ort_session_options(threads))
    return HFGenerate(model)


class CT2(System):
    def __init__(self, directory: Path, threads: int, compute_type: str):
        import ctranslate2

        self.translator = ctranslate2.Translator(str(directory), device="cpu", intra_threads=threads,
                                                 inter_threads=1, compute_type=compute_type)
        vocab = json.loads((directory / "shared_vocabulary.json").read_text())
        self.tokens = np.array(vocab, dtype=object)
        self.ids = {t: i for i, t in enumerate(vocab)}

    def source(self, ids, mask) -> list[list[str]]:
        """Token strings of each row's real tokens (CTranslate2 takes unpadded token lists, adds no EOS for T5)."""
        return [list(self.tokens[row[m == 1]]) for row, m in zip(ids, mask)]

    def generate(self, w, ids, mask):
        source = self.source(ids, mask)
        start = time.perf_counter()
        results = self.translator.translate_batch(source, max_decoding_length=w.new_tokens,
                                                  min_decoding_length=w.new_tokens, beam_size=w.num_beams,
                                                  return_logits_vocab=True)
        per_row = []
        for r in results:
            steps = r.logits[0]  # best hypothesis: one StorageView [vocab] per step
            if not steps or len(steps[0].shape) == 0:  # beam search returns empty StorageViews (4.8.5)
                per_row = None
                break
            per_row.append(np.stack([np.asarray(s) for s in steps]))
        logits = None if per_row is None else np.stack(per_row)
        seconds = time.perf_counter() - start
        sequences = np.array([[self.ids[t] for t in r.hypotheses[0]] for r in results])
        return seconds, logits, sequences


# ---- the memory-bandwidth floor ----------------------------------------------------------------------


class Floor:
    """The decoder's per-step weights as float32 matrices, multiplied in order by [rows, d] activations.

    Per layer: self-attention q, k, v, o (4 x d x d), cross-attention q and o (2 x d x d; its keys/values
    come from the encoder once), FFN wi (d x d_ff) and wo (d_ff x d); then the lm_head (d x vocab).
    154 MB for t5-small: far above the caches, so each step streams them from memory. The weights are
    stored [in, out] (``x @ w``), as ONNX Runtime's MatMul holds them: with numpy's OpenBLAS that
    layout streams faster than [out, in] (``w @ x``) on this machine.
    """

    def __init__(self):
        d, ff, layers, vocab = (T5_SMALL[k] for k in ("d_model", "d_ff", "num_decoder_layers", "vocab_size"))
        rng = np.random.default_rng(0)

        def w(rows, cols):
            return rng.standard_normal((rows, cols), dtype=np.float32) * 0.02

        self.layers = [([w(d, d) for _ in range(6)], w(d, ff), w(ff, d)) for _ in range(layers)]
        self.lm_head = w(d, vocab)
        self.d = d
        self.params = sum(m.size for attn, wi, wo in self.layers for m in (*attn, wi, wo)) + self.lm_head.size

    def step(self, x: np.ndarray) -> np.ndarray:
        for attn, wi, wo in self.layers:
            for m in attn:
                x = x @ m
            x = np.maximum(x @ wi, 0) @ wo
            x *= 1.0 / (np.abs(x).max() + 1e-6)  # keep the values normal (no denormals, no overflow)
        return x @ self.lm_head

    def run(self, w: Workload, max_steps: int = 64) -> list[float]:
        """Seconds of each of ``new_tokens`` steps (at most ``max_steps``: they do not grow) at ``rows`` rows."""
        x = np.ones((w.rows, self.d), dtype=np.float32)
        times = []
        for _ in range(min(w.new_tokens, max_steps)):
            t = time.perf_counter()
            self.step(x)
            times.append(time.perf_counter() - t)
        return times


# ---- the worker ----------------------------------------------------------------------------------------


def load(system: str, workdir: Path, threads: int):
    if system == "floor":
        return Floor()
    directory = artifact_dir(system, workdir)
    if system in ("t5ort-fp32", "t5ort-int8"):
        return T5ort(directory, threads)
    if system == "pytorch":
        return pytorch_system(directory, threads)
    if system == "optimum":
        return optimum_system(directory, threads)
    if system == "ct2-fp32":
        return CT2(directory, threads, "float32")
    if system == "ct2-int8":
        return CT2(directory, threads, "int8")
    raise ValueError(system)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _handle(obj, op: str, w: Workload, keep: bool):
    if op == "floor":
        return {"step_seconds": obj.run(w)}
    ids, mask = inputs(w)
    if op == "generate":
        seconds, logits, sequences = obj.generate(w, ids, mask)
        out = {"seconds": seconds, "logits_returned": logits is not None,
               "logits_shape": None if logits is None else list(logits.shape)}
        if keep:
            out["first_step_logits"] = _first_step(logits)
            out["sequences"] = np.asarray(sequences)
        return out
    if op == "first_token":
        return {"seconds": obj.first_token(w, ids, mask)}
    if op == "stream":
        return {"step_seconds": obj.stream_step_times(w, ids, mask)}
    if op == "bare":
        return {"step_seconds": obj.bare(w, ids, mask)}
    raise ValueError(op)


def worker(system: str, workdir: str, threads: int, conn) -> None:
    """Entry point of a worker process: load ``system``, then serve requests until told to stop."""
    os.dup2(2, 1)  # libraries' chatter goes to stderr; the parent's stdout holds only results
    sys.stdout = sys.stderr
    try:
        start = time.perf_counter()
        obj = load(system, Path(workdir), threads)
        info = {"load_seconds": time.perf_counter() - start, "rss_after_load_mb": proc_status_mb("VmRSS"),
                "cpu_seconds": cpu_seconds()}
        if system == "floor":
            info.update(params=obj.params, openblas=openblas_info())
        conn.send(("ok", info))
    except BaseException:  # noqa: BLE001 - reported to the parent, which skips the system
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        op, workload, keep = conn.recv()  # workload: a Workload
        if op == "stop":
            conn.send(("ok", {"peak_rss_mb": proc_status_mb("VmHWM"), "rss_mb": proc_status_mb("VmRSS"),
                              "cpu_seconds": cpu_seconds()}))
            return
        try:
            conn.send(("ok", _handle(obj, op, workload, keep)))
        except Exception:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))
