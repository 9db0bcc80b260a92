"""The systems ``t5ort.bench`` times, each loaded in its own worker process, and their artifacts.

A worker loads one system, then answers the parent's requests over a pipe, one at
a time (so only one system runs at any moment): time a whole generate call, time a
one-token call, report its memory. Every system returns the raw logits of every
step, as a user would get them (numpy arrays; turning tensors or StorageViews into
numpy is part of the timed call), and its tokens, for the agreement check.

Systems (``kind``):

- ``t5ort``: ``t5ort.load(OUT_DIR).generate(input_ids=..., output_logits=True)``;
- ``t5ort-bare``: the same export's decoder session alone: encode, then
  ``graphs.step`` on a fixed token (no search, no processors, no logits kept);
- ``pytorch``: transformers' ``generate(output_logits=True, return_dict_in_generate=True)``;
- ``optimum``: ``ORTModelForSeq2SeqLM`` on optimum's own export, t5ort's session options;
- ``ctranslate2`` / ``ctranslate2-int8``: ``Translator.translate_batch(...,
  return_logits_vocab=True)`` on CTranslate2's conversion (float32 / int8);
- ``floor`` / ``floor-int8``: no model, the floor of a step (:mod:`t5ort.bench.floor`): a call runs
  the MatMul graph over the decoder's per-step weights once per new token, at the request's rows.

Only this module's workers import torch, transformers, optimum or ctranslate2,
and only for the systems that need them. A peer may run under another Python
interpreter (``python=``: its own environment, e.g. Optimum's, which pins
transformers<4.58): its worker and preparation processes run there, importing
t5ort from this checkout (put on their PYTHONPATH), and :func:`probe_python` asks
that interpreter which modules it lacks.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .machine import own_cpu_seconds, proc_status_mb

PEERS = ("pytorch", "optimum", "ctranslate2", "ctranslate2-int8")
FLOORS = ("floor", "floor-int8")
KINDS = ("t5ort", "t5ort-bare", *PEERS, *FLOORS)
NEEDS = {  # kind -> modules its worker imports
    "t5ort": ["onnxruntime"],
    "t5ort-bare": ["onnxruntime"],
    "pytorch": ["torch", "transformers"],
    "optimum": ["torch", "optimum.onnxruntime"],
    "ctranslate2": ["ctranslate2"],
    "ctranslate2-int8": ["ctranslate2"],
    "floor": ["onnxruntime"],
    "floor-int8": ["onnxruntime"],
}
PREPARE_NEEDS = {"optimum": ["optimum.exporters"], "ctranslate2": ["ctranslate2", "transformers", "torch"],
                 "ctranslate2-int8": ["ctranslate2", "transformers", "torch"]}
BASE_NEEDS = ["numpy", "onnxruntime"]  # what any child imports with t5ort itself (another interpreter may lack them)
VERSIONED = {  # kind -> the distributions whose versions its worker reports
    "t5ort": ("onnxruntime",),
    "t5ort-bare": ("onnxruntime",),
    "pytorch": ("torch", "transformers"),
    "optimum": ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime"),
    "ctranslate2": ("ctranslate2",),
    "ctranslate2-int8": ("ctranslate2",),
    "floor": ("onnxruntime",),
    "floor-int8": ("onnxruntime",),
}
INSTALL = {  # kind -> what to pip install into an environment of its own
    "pytorch": "torch transformers onnxruntime",
    "optimum": "torch 'optimum-onnx[onnxruntime]'",
    "ctranslate2": "torch transformers ctranslate2 onnxruntime",
    "ctranslate2-int8": "torch transformers ctranslate2 onnxruntime",
}
OPTIMUM_LOADED = ("encoder_model.onnx", "decoder_model_merged.onnx")  # what ORTModelForSeq2SeqLM opens
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


def missing_modules(kind: str, prepare: bool = False, python: str | None = None) -> list[str]:
    """The modules ``kind``'s worker (or, with ``prepare``, its preparation) needs and cannot find: in this
    interpreter, or in ``python`` (another interpreter, asked with :func:`probe_python`)."""
    if python is not None:
        return probe_python(python, kind)["missing_prepare" if prepare else "missing"]
    import importlib.util

    out = []
    for m in (PREPARE_NEEDS.get(kind, []) if prepare else NEEDS[kind]):
        try:
            if importlib.util.find_spec(m) is None:
                out.append(m)
        except ModuleNotFoundError:
            out.append(m)
    return out


PROBE_MARK = "t5ort-bench-probe "
# Run as ``python -c PROBE JSON`` under a peer's interpreter (with this checkout on PYTHONPATH, as its
# children have it): which of the asked modules it cannot find, and its versions. Plain enough for any
# Python 3, so that a too-old one is reported as such.
PROBE = r"""
import importlib.util, json, platform, sys
ask = json.loads(sys.argv[1])
def missing(names):
    out = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except Exception:
            found = False
        if not found:
            out.append(name)
    return out
versions = {}
for dist in ask["versions"]:
    try:
        from importlib.metadata import version
        versions[dist] = version(dist)
    except Exception:
        pass
print(ask["mark"] + json.dumps({"executable": sys.executable, "python_version": platform.python_version(),
      "version_info": list(sys.version_info[:2]), "missing": missing(ask["needs"]),
      "missing_prepare": missing(ask["prepare"]), "versions": versions}))
"""


def _python_error(kind: str, python, problem: str) -> ValueError:
    venv = f".venv-{kind}"
    return ValueError(
        f"peer_python[{kind!r}] (--peer-python {kind}=PATH): {problem}. Pass the path of the Python interpreter "
        f"of an environment that has {kind}'s packages, e.g. `python3 -m venv {venv} && {venv}/bin/pip install "
        f"{INSTALL.get(kind, 'torch transformers onnxruntime')}`, then {venv}/bin/python.")


def probe_python(python, kind: str) -> dict:
    """Run ``python`` (a path, or a name on PATH) with a tiny ``-c`` script: ``{"python": its path,
    "python_version", "missing": modules kind's worker lacks there, "missing_prepare": modules making
    kind's artifact lacks there, "versions": {distribution: version}}``. ValueError (naming peer_python
    and the fix) where ``python`` is not an executable Python 3.10+."""
    path = str(python)
    if not path:
        raise _python_error(kind, python, "the path is empty")
    if os.sep not in path and not Path(path).exists():
        path = shutil.which(path) or path
    if not Path(path).exists():
        raise _python_error(kind, python, f"{path} does not exist")
    if Path(path).is_dir():
        hint = next((f" (did you mean {Path(path) / b}?)" for b in ("bin/python", "Scripts/python.exe")
                     if (Path(path) / b).is_file()), "")
        raise _python_error(kind, python, f"{path} is a directory, not an interpreter{hint}")
    if not os.access(path, os.X_OK):
        raise _python_error(kind, python, f"{path} is not executable")
    path = os.path.abspath(path)  # not resolved: a venv's python is a symlink to its base interpreter
    ask = {"mark": PROBE_MARK, "needs": list(dict.fromkeys(BASE_NEEDS + NEEDS[kind])),
           "prepare": list(dict.fromkeys(BASE_NEEDS + PREPARE_NEEDS.get(kind, []))),
           "versions": list(dict.fromkeys(("numpy", *VERSIONED[kind])))}
    try:
        out = subprocess.run([path, "-c", PROBE, json.dumps(ask)], env=child_env(), capture_output=True,
                             text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _python_error(kind, python, f"{path} could not be run as Python ({exc})") from None
    lines = [line for line in out.stdout.splitlines() if line.startswith(PROBE_MARK)]
    if out.returncode != 0 or not lines:
        said = (out.stderr.strip().splitlines() or [""])[-1]
        said = "" if not said or PROBE_MARK.strip() in said else f": {said[:160]}"  # not its echo of the script
        raise _python_error(kind, python, f"{path} is not a Python interpreter (it ran our `-c` script with exit "
                                          f"code {out.returncode} and no answer{said})")
    info = json.loads(lines[-1][len(PROBE_MARK):])
    if tuple(info["version_info"]) < (3, 10):
        raise _python_error(kind, python, f"{path} is Python {info['python_version']}; t5ort needs 3.10 or newer")
    return {"python": path, "python_version": info["python_version"], "missing": info["missing"],
            "missing_prepare": info["missing_prepare"], "versions": info["versions"]}


def dist_versions(kind: str) -> dict[str, str]:
    """The versions of ``kind``'s distributions installed in this interpreter."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in VERSIONED[kind]:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


@dataclass(frozen=True)
class Request:
    """One timed call: ``input_ids``/``attention_mask`` int64 [batch, L] (right-padded)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    num_beams: int
    new_tokens: int  # forced: min = max new tokens, so every system does the same work

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0] * self.num_beams


# ---- artifacts ---------------------------------------------------------------------------------------


def artifact_dir(kind: str, checkpoint: Path, work_dir: Path) -> Path:
    """Where the peer ``kind`` reads its artifact from (made by :func:`prepare` where it is not the checkpoint)."""
    return {
        "pytorch": checkpoint,
        "optimum": work_dir / "optimum",
        "ctranslate2": work_dir / "ct2-float32",
        "ctranslate2-int8": work_dir / "ct2-int8",
    }[kind]


def _stamp(checkpoint: Path) -> str:
    """What the cached artifacts were made from: the checkpoint's path and its files' sizes and mtimes."""
    files = sorted(p for p in checkpoint.iterdir() if p.is_file())
    return json.dumps([str(checkpoint.resolve())] + [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in files])


STAMP_FILE = "t5ort-bench-source.json"


def artifact_ready(kind: str, checkpoint: Path, work_dir: Path) -> bool:
    d = artifact_dir(kind, checkpoint, work_dir)
    if kind == "pytorch":
        return (d / "config.json").is_file()
    need = list(OPTIMUM_LOADED) if kind == "optimum" else ["model.bin", "shared_vocabulary.json"]
    stamp = d / STAMP_FILE
    return all((d / f).is_file() for f in need) and stamp.is_file() and stamp.read_text() == _stamp(checkpoint)


def artifact_files(kind: str, directory: Path) -> list[Path]:
    """The files a system reads at load time."""
    if kind == "optimum":
        names = (*OPTIMUM_LOADED, "config.json", "generation_config.json")
        return [p for p in directory.iterdir() if p.is_file() and (p.name in names or p.name.endswith(".onnx_data"))]
    return [p for p in Path(directory).rglob("*") if p.is_file() and p.name != STAMP_FILE]


class _StubTokenizer:
    """What CTranslate2's T5 loader asks of a tokenizer, for checkpoints that have none: token i is named
    ``<pad>``, ``</s>``, ``<unk>`` for 0, 1, 2 and ``t{i}`` otherwise (the inputs are ids anyway)."""

    pad_token, eos_token, unk_token = "<pad>", "</s>", "<unk>"

    def __init__(self, size: int):
        self.tokens = ["<pad>", "</s>", "<unk>"] + [f"t{i}" for i in range(3, size)]

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.tokens[i]


def _ct2_convert(checkpoint: Path, out: Path, quantization: str | None) -> None:
    from ctranslate2.converters import TransformersConverter

    has_tokenizer = any((checkpoint / f).is_file() for f in TOKENIZER_FILES)
    vocab_size = json.loads((checkpoint / "config.json").read_text())["vocab_size"]

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            if has_tokenizer:
                return super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            return _StubTokenizer(vocab_size)

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    Converter(str(checkpoint)).convert(str(tmp), quantization=quantization, force=True)
    (tmp / STAMP_FILE).write_text(_stamp(checkpoint))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def prepare(kind: str, checkpoint: str, work_dir: str) -> None:
    """Make ``kind``'s artifact from ``checkpoint`` in ``work_dir`` (run in a throwaway process, so that no
    worker's peak RSS holds a conversion)."""
    os.dup2(2, 1)  # the converters' chatter goes to stderr
    sys.stdout = sys.stderr
    checkpoint, work_dir = Path(checkpoint), Path(work_dir)
    out = artifact_dir(kind, checkpoint, work_dir)
    if kind == "optimum":
        from optimum.exporters.onnx import main_export

        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        main_export(str(checkpoint), tmp, task="text2text-generation-with-past", do_validation=False)
        (tmp / STAMP_FILE).write_text(_stamp(checkpoint))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    elif kind in ("ctranslate2", "ctranslate2-int8"):
        _ct2_convert(checkpoint, out, "int8" if kind == "ctranslate2-int8" else None)


# ---- the systems -------------------------------------------------------------------------------------


class System:
    def generate(self, r: Request) -> tuple[float, np.ndarray | None]:
        """(seconds of one whole call, the generated tokens [rows, new_tokens] or None)."""
        raise NotImplementedError


class T5ort(System):
    def __init__(self, directory: Path, threads: int, runtime=None):
        """``runtime``: an already loaded one to time (a bare decoder on the same sessions); None: load it."""
        import t5ort

        self.rt = runtime if runtime is not None else t5ort.load(directory, threads=threads)

    def generate(self, r):
        start = time.perf_counter()
        res = self.rt.generate(input_ids=r.input_ids, attention_mask=r.attention_mask, max_new_tokens=r.new_tokens,
                               min_new_tokens=r.new_tokens, num_beams=r.num_beams, output_logits=True)
        seconds = time.perf_counter() - start
        return seconds, res.sequences[:, -r.new_tokens:]


class T5ortBare(T5ort):
    def generate(self, r):
        g = self.rt.graphs
        start = time.perf_counter()
        state = g.start(g.expand(g.encode(r.input_ids, r.attention_mask), r.num_beams))
        tokens = np.zeros(r.rows, dtype=np.int64)  # the decoder start token, then a fixed one
        for _ in range(r.new_tokens):
            _logits, state = g.step(tokens, state)
            tokens = np.full(r.rows, 5, dtype=np.int64)
        return time.perf_counter() - start, None


class HFGenerate(System):
    """transformers' generate, on PyTorch or on optimum's ONNX Runtime model."""

    def __init__(self, model):
        import torch

        self.torch = torch
        self.model = model

    def generate(self, r):
        torch = self.torch
        ids, mask = torch.from_numpy(r.input_ids), torch.from_numpy(r.attention_mask)
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=mask, max_new_tokens=r.new_tokens,
                                      min_new_tokens=r.new_tokens, num_beams=r.num_beams, do_sample=False,
                                      output_logits=True, return_dict_in_generate=True)
            torch.stack(out.logits, dim=1).numpy()
        seconds = time.perf_counter() - start
        return seconds, out.sequences[:, -r.new_tokens:].numpy()


def _pytorch(directory: Path, threads: int) -> System:
    import torch
    from transformers import T5ForConditionalGeneration

    torch.set_num_threads(threads)
    return HFGenerate(T5ForConditionalGeneration.from_pretrained(directory).eval())


def _optimum(directory: Path, threads: int) -> System:
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    from ..runtime.graphs import session_options

    torch.set_num_threads(threads)  # generate()'s own tensor work (logits processors, stacking)
    return HFGenerate(ORTModelForSeq2SeqLM.from_pretrained(directory, provider="CPUExecutionProvider",
                                                           session_options=session_options(threads)))


class CT2(System):
    """CTranslate2 takes unpadded token strings: ids map to its vocabulary (the checkpoint's tokenizer order)."""

    def __init__(self, directory: Path, threads: int, compute_type: str):
        import ctranslate2

        self.translator = ctranslate2.Translator(str(directory), device="cpu", intra_threads=threads,
                                                 inter_threads=1, compute_type=compute_type)
        vocab = json.loads((directory / "shared_vocabulary.json").read_text())
        self.tokens = np.array(vocab, dtype=object)
        self.ids = {t: i for i, t in enumerate(vocab)}

    def generate(self, r):
        source = [list(self.tokens[row[m == 1]]) for row, m in zip(r.input_ids, r.attention_mask)]
        start = time.perf_counter()
        results = self.translator.translate_batch(source, max_decoding_length=r.new_tokens,
                                                  min_decoding_length=r.new_tokens, beam_size=r.num_beams,
                                                  return_logits_vocab=True)
        for res in results:  # the best hypothesis: one StorageView [vocab] per step (empty with beams, 4.8.5)
            [np.asarray(s) for s in res.logits[0] if len(s.shape)]
        seconds = time.perf_counter() - start
        sequences = [[self.ids[t] for t in res.hypotheses[0]] for res in results]
        if len({len(s) for s in sequences}) != 1:  # an EOS ended a row early despite min_decoding_length
            return seconds, None
        return seconds, np.array(sequences, dtype=np.int64)


class FloorSteps(System):
    """The floor graph run once per new token at the request's rows (batch x beams): a decode with nothing
    but the weight reads, no encoder."""

    def __init__(self, directory: Path, threads: int):
        from .floor import Floor

        self.floor = Floor(directory, threads)

    def generate(self, r):
        start = time.perf_counter()
        for _ in range(r.new_tokens):
            self.floor.step(r.rows)
        return time.perf_counter() - start, None


def load(kind: str, directory: Path, threads: int) -> System:
    if kind == "t5ort":
        return T5ort(directory, threads)
    if kind == "t5ort-bare":
        return T5ortBare(directory, threads)
    if kind == "pytorch":
        return _pytorch(directory, threads)
    if kind == "optimum":
        return _optimum(directory, threads)
    if kind == "ctranslate2":
        return CT2(directory, threads, "float32")
    if kind == "ctranslate2-int8":
        return CT2(directory, threads, "int8")
    if kind in FLOORS:
        return FloorSteps(directory, threads)
    raise ValueError(f"unknown system kind {kind!r}; use one of {KINDS}")


# ---- the worker process ------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The parent's environment with this checkout first on PYTHONPATH: any interpreter, t5ort installed in it
    or not, imports this t5ort."""
    import t5ort

    env = dict(os.environ)
    root = str(Path(t5ort.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def child_command(*args: str, python: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a worker or preparation process: ``python -m t5ort.bench._child
    ARGS`` (``python``: this interpreter by default, or a peer's own), with this t5ort importable and every
    library's thread pool (OpenMP for CTranslate2 and PyTorch, OpenBLAS) sized by the worker's threads; the
    parent's own environment is left as it is."""
    env = child_env()
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args[0] == "worker":
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = args[3]
    return [python or sys.executable, "-m", "t5ort.bench._child", *args], env


def worker(kind: str, directory: str, threads: int) -> None:
    """A worker process: load the system, then answer requests (pickled over stdin/stdout) until told to stop."""
    from multiprocessing.connection import Connection

    incoming = Connection(os.dup(0), writable=False)
    outgoing = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # libraries' chatter goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    try:
        start = time.perf_counter()
        system = load(kind, Path(directory), threads)
        outgoing.send(("ok", {"load_seconds": time.perf_counter() - start,
                              "rss_after_load_mb": proc_status_mb("VmRSS"), "python": sys.executable,
                              "python_version": platform.python_version(), "versions": dist_versions(kind)}))
    except BaseException:  # noqa: BLE001 - reported to the parent, which skips the system
        outgoing.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            request = incoming.recv()
        except EOFError:  # the parent went away
            return
        if request is None:
            outgoing.send(("ok", {"peak_rss_mb": proc_status_mb("VmHWM"), "cpu_seconds": own_cpu_seconds()}))
            return
        try:
            cpu = time.process_time()
            seconds, tokens = system.generate(request)
            outgoing.send(("ok", {"seconds": seconds, "cpu_seconds": time.process_time() - cpu, "tokens": tokens}))
        except Exception:  # noqa: BLE001
            outgoing.send(("error", traceback.format_exc()))

