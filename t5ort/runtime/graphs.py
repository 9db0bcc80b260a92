"""The inference seam: the one object that runs the ONNX graphs.

``encode(ids, mask)`` and ``step(tokens, state) -> (logits, state)``. It owns the
sessions, the tensor names (from the manifest) and the cache layout; the decoding
loop only ever sees numpy logits.

The encoder graph computes the cross-attention keys/values of every decoder layer
once. The decoder graph runs every step of every path (greedy, sampling, beam
search, scoring, speculative verification, in-flight batches) over a
self-attention cache held in place: per layer a key and a value buffer
``[rows, heads, capacity, d_kv]`` in host memory, with an int64 mask ``[rows,
capacity]``, each bound once as both the graph's ``cache.*`` input and its
``present.*`` output. A run feeds T new positions per row; the graph's fused
attention (onnxruntime's MultiHeadAttention) reads columns ``0 .. past_length``
and writes the new keys/values into the next columns itself. Nothing copies the
cache between steps, so a step's cost does not grow with the copy of a longer
history. A full buffer is replaced by one twice as wide (one copy, amortised).
Beam search reorders rows in place; rolling back (speculative decoding) masks
columns again. Each run also returns the logits' logsumexp [rows, T], which the
loop uses for log-probs and its NaN/inf check.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from .errors import ArtifactError, ProviderError
from .manifest import GraphSpec, Manifest, file_sha256

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
MIN_ONNXRUNTIME = (1, 31)  # MultiHeadAttention writing into a present buffer shared with its past (1.30 aborts)
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True, eq=False)
class EncoderOutput:
    """The encoder's result for a batch of sources, computed once and reusable: every decoder layer's
    cross-attention keys/values (``OrtValue``s on the runtime's device) and the source mask.

    ``T5Runtime.encode`` makes one; ``generate``, ``stream``, ``score`` and ``decoder`` take it in place of
    the inputs (``encoder_output=``), so a source is encoded once for any number of calls. ``rows`` of it
    (``encoder_output[rows]``: an int, a slice or an index array, repeats allowed) are another one.
    """

    cross_kv: tuple[ort.OrtValue, ...]  # [key_0, value_0, key_1, ...], each [batch, heads, src_len, d_kv]
    attention_mask: np.ndarray  # [batch, src_len] int64
    host_kv: tuple[np.ndarray, ...] | None = None  # writable host arrays that cross_kv shares (in-flight batching)
    input_ids: np.ndarray | None = None  # [batch, src_len] int64, the sources (prompt lookup, caches)
    device: tuple[str, int] = ("cpu", 0)  # where cross_kv lives: (device, device id)

    @property
    def batch_size(self) -> int:
        return int(self.attention_mask.shape[0])

    @property
    def nbytes(self) -> int:
        """The memory it holds: the cross-attention keys/values and the mask (and the source ids)."""
        kv = sum(int(np.prod(v.shape())) * np.dtype(_ORT_TYPES.get(v.data_type(), np.float32)).itemsize
                 for v in self.cross_kv)
        return kv + self.attention_mask.nbytes + (0 if self.input_ids is None else self.input_ids.nbytes)

    def __getitem__(self, rows) -> EncoderOutput:
        index = np.arange(self.batch_size)[rows]
        index = np.atleast_1d(index).astype(np.int64)  # an int keeps its row as a batch of one
        if index.size == 0:
            raise IndexError(f"rows {rows!r} select no row of this encoder output (batch {self.batch_size}).")
        device, device_id = self.device
        cross_kv = tuple(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(host_array(v)[index]), device,
                                                          device_id) for v in self.cross_kv)
        return EncoderOutput(cross_kv, np.ascontiguousarray(self.attention_mask[index]), None,
                             None if self.input_ids is None else np.ascontiguousarray(self.input_ids[index]),
                             self.device)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


INITIAL_CAPACITY = 32  # cache columns a new state starts with; doubled whenever full


@dataclass(frozen=True)
class DecoderState:
    """A running batch: the cache buffers, their mask, and the encoder output the rows attend to.

    ``cache``: [key_0, value_0, key_1, ...], each [rows, heads, capacity, d_kv], host memory
    bound to the decoder's ``cache.*`` inputs and ``present.*`` outputs (the graph writes each run's
    new keys/values into them); columns ``past_length`` and later are free. ``self_mask``: int64
    [rows, capacity], 1 where a row attends (0: free columns, and the left padding of a row that
    joined a running batch late). ``binding``: the decoder's inputs and the cache's outputs bound to
    these arrays; ``position``: int64 [1], the bound ``past_length``. A state is used once: the next
    step's state shares (and changes) its arrays.
    """

    cache: tuple[np.ndarray, ...]
    self_mask: np.ndarray
    past_length: int
    encoder: EncoderOutput
    binding: ort.IOBinding
    position: np.ndarray

    @property
    def capacity(self) -> int:
        return int(self.self_mask.shape[1])


def host_array(value: ort.OrtValue) -> np.ndarray:
    """A CPU ``OrtValue`` as a numpy array without a copy, or a host copy where that is not possible (CUDA,
    an onnxruntime without DLPack). An ``OrtValue`` made over a numpy array gives that array (which owns the
    memory: a DLPack view would keep only the ``OrtValue`` alive, not the array under it); one onnxruntime
    allocated gives a DLPack view (which keeps the value alive)."""
    owner = getattr(value, "_numpy_obj", None)
    if isinstance(owner, np.ndarray):
        return owner
    c_value = getattr(value, "_ortvalue", None)
    if value.device_name().lower() == "cpu" and hasattr(c_value, "__dlpack__"):
        return np.from_dlpack(c_value)
    return value.numpy()


def _shape(shape) -> tuple:
    """A tensor shape with symbolic and unknown axes reduced to None, for comparing declared and actual shapes."""
    return tuple(d if isinstance(d, int) else None for d in shape)


def common_session_options(threads: int | None) -> ort.SessionOptions:
    """What every t5ort session shares, apart from its threads' spinning (:func:`session_options`)."""
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Smaller, dynamically sized work blocks for the intra-op threads: a thread the OS delays no longer
    # holds up the whole step. Measured side by side (t5-small shape, 2 threads, two runs): 0-7% faster
    # in 11 of 12 workload/precision pairs; ORT_ENABLE_EXTENDED changed nothing.
    so.add_session_config_entry("session.dynamic_block_base", "4")
    return so


SPIN_US = 1000  # how long a decoder session's idle thread spins for the next step's work before it sleeps


def session_options(threads: int | None, role: str = "decoder", spin: bool = True) -> ort.SessionOptions:
    """The options of a t5ort session of ``role`` (``"encoder"`` or ``"decoder"``); benchmarks give the peers' onnxruntime sessions the decoder's.

    What the intra-op threads do when they run out of work, with ``spin`` (``load(spin=...)``):

    - all sessions: they spin between the ops of one run (a blocked thread wakes slowly, and a run
      has hundreds of small parallel ops);
    - the encoder's: they sleep as soon as its run ends (``session.force_spinning_stop``), so that they
      never spin on the cores the decoder's threads need next;
    - the decoders': they spin for at most ``SPIN_US`` after a run (``session.intra_op.spin_duration_us``),
      which covers the loop's Python between two steps (0.1-1.5 ms), then sleep: an idle runtime costs
      no CPU 1 ms after a call, where onnxruntime's default spins for ~20 ms per thread.

    ``spin=False``: they never spin (``session.intra_op.allow_spinning=0``), for machines whose cores other
    work keeps busy. Why (``benchmarks/thread_pools.py`` at commit 65136db, t5-small shape, 2 threads, 32 forced tokens,
    each policy in its own process, interleaved runs; the manual, How it works): on the idle machine this
    policy took 0.56-0.92x the ms/step of never spinning in two runs, at greedy batch 1, ragged batch 16 and
    beam 4 in fp32 and int8, level with unbounded spinning and with ``force_spinning_stop`` on both,
    and spent no CPU in the 0.2 s after a call (unbounded: 40 ms); with a busy loop on one of the two
    cores, never spinning was faster (this policy 1.17-1.49x its ms/step in two runs).
    """
    if role not in ("encoder", "decoder"):
        raise ValueError(f"role={role!r}: use 'encoder' or 'decoder'.")
    so = common_session_options(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin and role == "encoder":
        so.add_session_config_entry("session.force_spinning_stop", "1")
    elif spin:
        so.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_US))
    return so


def _providers(provider: str, device_id: int) -> list:
    if provider not in PROVIDERS:
        raise ValueError(f"provider={provider!r} is not supported; use one of {sorted(PROVIDERS)}.")
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise ProviderError(
            "provider='cuda' but this onnxruntime has no CUDAExecutionProvider "
            f"(available: {available}). Install onnxruntime-gpu in place of onnxruntime "
            "(pip uninstall -y onnxruntime && pip install onnxruntime-gpu), or use provider='cpu'."
        )
    # TF32 (onnxruntime's default on Ampere and later) rounds fp32 matrix products to 10-bit mantissas,
    # which would break the fp32 parity contract with PyTorch.
    return [("CUDAExecutionProvider", {"device_id": device_id, "use_tf32": 0}), "CPUExecutionProvider"]


def _check_onnxruntime(version: str) -> None:
    """Refuse an onnxruntime older than MIN_ONNXRUNTIME, which would crash in the decoder's first step."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:  # a development build: trust it
        return
    if found < MIN_ONNXRUNTIME:
        need = ".".join(map(str, MIN_ONNXRUNTIME))
        raise ProviderError(f"onnxruntime {version} is too old for t5ort's decoder graph (its fused attention writes "
                            f"the cache in place from onnxruntime {need} on); pip install 'onnxruntime>={need}'.")


class T5Graphs:
    """Runs the encoder and decoder graphs described by a manifest."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        *,
        provider: str = "cpu",
        threads: int | None = None,
        device_id: int = 0,
        verify: bool = True,
        spin: bool = True,
    ):
        _check_onnxruntime(ort.__version__)
        self.manifest = manifest
        self._verify = verify
        self.provider = provider
        self._device = "cuda" if provider == "cuda" else "cpu"
        self._device_id = device_id
        self._dtype = _NUMPY_DTYPES[manifest.dtype]  # of the caches; the logits are float32 (manifest-declared)
        self._logits_dtype = np.dtype(manifest.decoder.tensor(manifest.decoder_io.logits).dtype)
        g = manifest.geometry
        self._heads, self._d_kv, self._vocab = g.num_heads, g.d_kv, g.vocab_size
        providers = _providers(provider, device_id)
        self._check_weights(directory)
        self.encoder_session = self._open(directory, manifest.encoder, session_options(threads, "encoder", spin),
                                          providers)
        self.decoder_session = self._open(directory, manifest.decoder, session_options(threads, "decoder", spin),
                                          providers)
        io, eio = manifest.decoder_io, manifest.encoder_io
        self._encoder_cross = [n for pair in zip(eio.cross_key, eio.cross_value) for n in pair]
        self._cache_names = [n for pair in zip(io.cache_key, io.cache_value) for n in pair]
        self._cross_names = [n for pair in zip(io.cross_key, io.cross_value) for n in pair]
        self._present_names = [n for pair in zip(io.present_key, io.present_value) for n in pair]

    def _check_file(self, path: Path, sha256: str | None, what: str) -> None:
        """``path`` exists and, with verify, has the checksum recorded in the manifest."""
        if not path.is_file():
            raise ArtifactError(f"{path}: {what} missing; re-export the model with `t5ort export`.")
        if self._verify and sha256 and file_sha256(path) != sha256:
            raise ArtifactError(
                f"{path}: checksum differs from the one recorded in t5ort.json: the file was changed or "
                "damaged; re-export the model (or load with verify=False to skip this check)."
            )

    def _check_weights(self, directory: Path) -> None:
        """The shared weights file, where the export has one."""
        if self.manifest.weights is not None:
            self._check_file(directory / self.manifest.weights.file, self.manifest.weights.sha256, "weights file")

    def _open(self, directory: Path, spec: GraphSpec, options, providers) -> ort.InferenceSession:
        path = directory / spec.file
        self._check_file(path, spec.sha256, "graph file")
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ArtifactError(
                f"{path}: onnxruntime cannot load this graph ({type(exc).__name__}: {exc}); "
                "the file is broken or truncated, re-export the model with `t5ort export`."
            ) from exc
        if self.provider == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise ProviderError(
                f"{path}: onnxruntime could not start the CUDA provider (check the CUDA and cuDNN "
                "libraries that onnxruntime-gpu needs), or use provider='cpu'."
            )
        actual = {(t.name, _shape(t.shape)) for t in session.get_inputs() + session.get_outputs()}
        declared = {(t.name, _shape(t.shape)) for t in spec.inputs + spec.outputs}
        if actual != declared:
            raise ArtifactError(
                f"{path}: the graph's tensors do not match the manifest (differing names or shapes: "
                f"{sorted(actual ^ declared, key=str)[:6]}); re-export the model with `t5ort export`."
            )
        return session

    # ---- encoder -------------------------------------------------------------

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> EncoderOutput:
        """Run the encoder. ``input_ids``/``attention_mask``: int64 [batch, src_len].

        A right-padded batch of sources of very different lengths is encoded in groups of similar length,
        each at its own longest length (:func:`length_groups`), so that the encoder does not compute the
        padding; the groups' outputs are put back in batch order (zero past each group's length, where the
        mask hides them). One pass otherwise (and on CUDA)."""
        ids = np.ascontiguousarray(input_ids, np.int64)
        mask = np.ascontiguousarray(attention_mask, np.int64)
        groups = length_groups(mask) if self._device == "cpu" else None
        if groups is None:
            cross_kv = self._run_encoder(ids, mask)
        else:
            host = None
            for rows in groups:
                width = int(mask[rows].sum(axis=1).max())
                out = [host_array(v) for v in self._run_encoder(ids[rows, :width], mask[rows, :width])]
                if host is None:  # [batch, heads, src_len, d_kv] each
                    host = [np.zeros((len(ids), v.shape[1], ids.shape[1], v.shape[3]), v.dtype) for v in out]
                for whole, part in zip(host, out):
                    whole[rows, :, :width] = part
            cross_kv = tuple(ort.OrtValue.ortvalue_from_numpy(h) for h in host)
        return EncoderOutput(cross_kv=cross_kv, attention_mask=mask, input_ids=ids,
                             device=(self._device, self._device_id))

    def _run_encoder(self, ids: np.ndarray, mask: np.ndarray) -> tuple[ort.OrtValue, ...]:
        io = self.manifest.encoder_io
        binding = self.encoder_session.io_binding()
        binding.bind_cpu_input(io.input_ids, np.ascontiguousarray(ids))
        binding.bind_cpu_input(io.attention_mask, np.ascontiguousarray(mask))
        for name in self._encoder_cross:
            binding.bind_output(name, self._device, self._device_id)
        self.encoder_session.run_with_iobinding(binding)
        return tuple(binding.get_outputs())

    # ---- decoder states ------------------------------------------------------

    def _state(self, cache: tuple[np.ndarray, ...], self_mask: np.ndarray, past_length: int,
               encoder: EncoderOutput) -> DecoderState:
        """A state over these arrays, with a fresh binding of all of them (OrtValues over the arrays' own
        memory on the CPU: what the runtime writes into them between steps, the graph reads)."""
        binding = self.decoder_session.io_binding()
        position = np.array([past_length], np.int64)
        io = self.manifest.decoder_io
        for name, array in ((io.past_length, position), (io.self_attention_mask, self_mask),
                            (io.encoder_attention_mask, encoder.attention_mask)):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        for name, present, array in zip(self._cache_names, self._present_names, cache):
            buffer = ort.OrtValue.ortvalue_from_numpy(array)  # the graph reads and writes the same memory
            binding.bind_ortvalue_input(name, buffer)
            binding.bind_output(present, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        for name, value in zip(self._cross_names, encoder.cross_kv):
            binding.bind_ortvalue_input(name, value)
        return DecoderState(cache, self_mask, past_length, encoder, binding, position)

    def _buffers(self, cache, self_mask: np.ndarray, used: int,
                 capacity: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """New buffers of ``capacity`` columns holding the first ``used`` columns of ``cache``/``self_mask``."""
        rows = self_mask.shape[0]
        mask = np.zeros((rows, capacity), np.int64)
        mask[:, :used] = self_mask[:, :used]
        out = []
        for value in cache:
            buffer = np.empty((rows, self._heads, capacity, self._d_kv), self._dtype)
            buffer[:, :, :used] = value[:, :, :used]
            buffer[:, :, used:] = 0
            out.append(buffer)
        return tuple(out), mask

    def _empty(self, rows: int, capacity: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        cache = tuple(np.zeros((rows, self._heads, capacity, self._d_kv), self._dtype) for _ in self._cache_names)
        return cache, np.zeros((rows, capacity), np.int64)

    def start(self, encoder_output: EncoderOutput, capacity: int = INITIAL_CAPACITY) -> DecoderState:
        """A fresh decoding state over ``encoder_output``: an empty cache of ``capacity`` columns."""
        cache, mask = self._empty(encoder_output.batch_size, max(1, capacity))
        return self._state(cache, mask, 0, encoder_output)

    # ---- the decoder ---------------------------------------------------------

    def step(self, tokens: np.ndarray, state: DecoderState, out: np.ndarray | None = None,
             logsumexp_out: np.ndarray | None = None) -> tuple[np.ndarray, DecoderState]:
        """Feed one token per row (int64 [rows]); return that step's raw logits [rows, vocab].

        ``out``: a C-contiguous float32 [rows, vocab] host array that onnxruntime writes the
        logits into (and that is returned), so that a caller keeping every step's logits spends
        no copy on them. ``logsumexp_out``: float32 [rows] that receives their logsumexp.
        """
        logits, state = self.forward(np.asarray(tokens).reshape(-1, 1), state,
                                     out=None if out is None else out[:, None, :],
                                     logsumexp_out=None if logsumexp_out is None else logsumexp_out[:, None])
        return logits[:, -1, :], state

    def forward(self, decoder_input_ids: np.ndarray, state: DecoderState, out: np.ndarray | None = None,
                logsumexp_out: np.ndarray | None = None) -> tuple[np.ndarray, DecoderState]:
        """Feed ``decoder_input_ids`` [rows, T] after the cached positions; return raw logits [rows, T, vocab].

        T > 1 is one teacher-forced pass (causal within the T positions). ``out``: as in :meth:`step`,
        [rows, T, vocab]. ``logsumexp_out``: float32 [rows, T] (any strides) that receives the logits'
        logsumexp, as the graph computes it (NaN or inf where a position's logits are not all finite).
        """
        rows, new = decoder_input_ids.shape
        past = state.past_length
        if past + new > state.capacity:  # full: twice as wide (one copy of the cache)
            cache, mask = self._buffers(state.cache, state.self_mask, past, max(past + new, 2 * state.capacity))
            state = self._state(cache, mask, past, state.encoder)
        io, binding = self.manifest.decoder_io, state.binding
        binding.bind_cpu_input(io.input_ids, np.ascontiguousarray(decoder_input_ids, np.int64))
        out = self._output(out, (rows, new, self._vocab), "out")
        binding.bind_output(io.logits, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        lse = np.empty((rows, new), self._logits_dtype)
        binding.bind_output(io.logsumexp, "cpu", 0, lse.dtype, list(lse.shape), lse.ctypes.data)
        state.self_mask[:, past:past + new] = 1  # the new positions attend to themselves (causally)
        state.position[0] = past
        self.decoder_session.run_with_iobinding(binding)  # writes the new keys/values into columns past ..
        if logsumexp_out is not None:
            logsumexp_out[...] = lse
        return out, replace(state, past_length=past + new)

    def _output(self, out: np.ndarray | None, expected: tuple, name: str) -> np.ndarray:
        if out is None:
            return np.empty(expected, self._logits_dtype)
        if out.shape != expected or out.dtype != self._logits_dtype or not out.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous {self._logits_dtype.name} array of shape "
                             f"{expected}, got {out.dtype} {out.shape}.")
        return out

    def reorder(self, state: DecoderState, source: np.ndarray) -> DecoderState:
        """Cache rows taken from ``source`` [rows] (beam search), in place. Cross keys/values stay:
        a beam's source row always belongs to the same input, whose cross keys/values are the same."""
        moved = np.flatnonzero(source != np.arange(len(source)))  # rows that continue another row's history
        if len(moved) == 0:
            return state
        past, source = state.past_length, source[moved]
        for buffer in state.cache:
            buffer[moved, :, :past] = buffer[source, :, :past]  # [moved, heads, past, d_kv] (the right side is a copy)
        state.self_mask[moved] = state.self_mask[source]
        return state

    def truncate(self, state: DecoderState, past_length: int) -> DecoderState:
        """Forget the cached positions from ``past_length`` on (the tokens a verify pass fed beyond them
        were not kept): their columns are free again. Cross keys/values stay."""
        if not 0 <= past_length <= state.past_length:
            raise ValueError(f"past_length must lie in [0, {state.past_length}], got {past_length}.")
        state.self_mask[:, past_length:state.past_length] = 0
        return replace(state, past_length=past_length)

    def keep(self, state: DecoderState, start: int, kept: np.ndarray) -> DecoderState:
        """After a pass that fed columns ``start ..`` of every row, row r keeps the first ``kept[r]`` of
        them (int [rows]; speculative decoding: rows accept different numbers of drafted tokens); the
        others are forgotten. Rows stay aligned on one ``past_length`` (``start + max(kept)``): a row that
        keeps fewer moves its history right by the difference, into masked columns on its left. T5's
        position bias depends only on query-key distances, so the row's logits do not change (as for
        rows that join a running batch late). Cross keys/values stay."""
        kept = np.asarray(kept, np.int64)
        if kept.shape != (state.self_mask.shape[0],) or kept.min() < 0 or start + kept.max() > state.past_length:
            raise ValueError(f"kept must give each of the {state.self_mask.shape[0]} rows a count in "
                             f"[0, {state.past_length - start}], got {kept.tolist()}.")
        past = start + int(kept.max())
        for row in np.flatnonzero(kept < kept.max()):
            shift, end = int(kept.max() - kept[row]), start + int(kept[row])  # its history: columns [0, end)
            for buffer in state.cache:
                buffer[row, :, shift:past] = buffer[row, :, :end].copy()  # [heads, end, d_kv], moved right
            state.self_mask[row, shift:past] = state.self_mask[row, :end].copy()
            state.self_mask[row, :shift] = 0
        state.self_mask[:, past:state.past_length] = 0
        return replace(state, past_length=past)

    # ---- batch reshaping (beams, return sequences) ------------------------------

    def _to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._device, self._device_id)

    def expand(self, encoder_output: EncoderOutput, times: int | Sequence[int]) -> EncoderOutput:
        """Repeat every row ``times`` times (row i -> rows i*times .. i*times+times-1), once, before decoding.
        ``times`` may also give each row its own count (in-flight batching: each member's beams or samples)."""
        if np.all(np.asarray(times) == 1):
            return encoder_output
        return encoder_output[np.repeat(np.arange(encoder_output.batch_size), times)]

    def _cross_from_host(self, host_kv, attention_mask: np.ndarray) -> EncoderOutput:
        """Cross keys/values from host arrays; on the CPU the OrtValues share their memory (no copy), so
        :meth:`fill` can write new rows' keys/values into them in place."""
        host_kv = tuple(np.ascontiguousarray(h) for h in host_kv)
        return EncoderOutput(tuple(self._to_device(h) for h in host_kv),
                             np.ascontiguousarray(attention_mask, np.int64), host_kv,
                             device=(self._device, self._device_id))

    # ---- in-flight batching: rows join and leave a running batch --------------------

    def join(self, state: DecoderState | None, encoder_output: EncoderOutput) -> DecoderState:
        """``state``'s rows followed by ``encoder_output``'s rows, which have no history yet.

        The new rows' cache is left-padded to the running rows' past length (masked out: they
        attend only to what they feed from now on); the cross-attention keys/values of both are
        padded to the longer source, with the encoder mask. T5's position bias depends only on
        query-key distances, so a row gets the logits it would get alone. ``state`` None: a batch
        of the new rows only.
        """
        new_kv = [host_array(v) for v in encoder_output.cross_kv]
        new_mask, rows = encoder_output.attention_mask, encoder_output.batch_size
        if state is None:
            cache, mask = self._empty(rows, INITIAL_CAPACITY)
            return self._state(cache, mask, 0, self._cross_from_host((np.array(v) for v in new_kv), new_mask))
        old = state.encoder
        old_kv = old.host_kv if old.host_kv is not None else tuple(host_array(v) for v in old.cross_kv)
        width = max(old.attention_mask.shape[1], new_mask.shape[1])
        host_kv = (np.concatenate([_pad_axis(a, 2, width), _pad_axis(b, 2, width)])
                   for a, b in zip(old_kv, new_kv))  # [rows + new, heads, width, d_kv]
        encoder_mask = np.concatenate([_pad_axis(old.attention_mask, 1, width), _pad_axis(new_mask, 1, width)])
        cache = tuple(np.concatenate([v, np.zeros((rows, *v.shape[1:]), self._dtype)]) for v in state.cache)
        self_mask = np.concatenate([state.self_mask, np.zeros((rows, state.capacity), np.int64)])
        return self._state(cache, self_mask, state.past_length, self._cross_from_host(host_kv, encoder_mask))

    def widen(self, state: DecoderState, width: int) -> DecoderState:
        """``state`` with room for sources of ``width`` positions: its cross-attention keys/values and encoder
        mask zero-padded to ``width`` (new arrays; the self-attention cache stays), so that :meth:`fill` can
        give a longer source a done row instead of :meth:`join` copying the whole cache for it."""
        enc = state.encoder
        if width <= enc.attention_mask.shape[1]:
            return state
        old_kv = enc.host_kv if enc.host_kv is not None else tuple(host_array(v) for v in enc.cross_kv)
        host_kv = (_pad_axis(v, 2, width) for v in old_kv)
        return self._state(state.cache, state.self_mask, state.past_length,
                           self._cross_from_host(host_kv, _pad_axis(enc.attention_mask, 1, width)))

    def fill(self, state: DecoderState, rows: np.ndarray, encoder_output: EncoderOutput,
             source_rows: np.ndarray) -> DecoderState:
        """Rows ``rows`` of a running batch (rows that are done) start over as ``encoder_output``'s rows
        ``source_rows``, which have no history yet: no copy of the cache.

        Their cached positions are masked out (the old keys/values stay, never attended to), their
        cross-attention keys/values and encoder mask are written in place. The new sources must fit
        the batch's source width (:meth:`join` otherwise).
        """
        rows = np.asarray(rows, np.int64)
        enc = state.encoder
        check_sources_fit(enc.attention_mask, encoder_output, source_rows)
        state.self_mask[rows] = 0  # their old history is not theirs
        if enc.host_kv is not None and self._device == "cpu":  # the bound arrays themselves
            write_sources(enc.host_kv, enc.attention_mask, rows, encoder_output, source_rows)
            return state
        host_kv, mask = tuple(np.array(host_array(v)) for v in enc.cross_kv), enc.attention_mask.copy()
        write_sources(host_kv, mask, rows, encoder_output, source_rows)  # copies, bound anew (CUDA)
        return self._state(state.cache, state.self_mask, state.past_length, self._cross_from_host(host_kv, mask))

    def release(self, state: DecoderState, rows: np.ndarray) -> DecoderState:
        """Rows ``rows`` of a running batch are done (fed padding until :meth:`select` drops them or
        :meth:`fill` reuses them): their cached positions are masked out, in place, so that they no longer
        hold the leading columns :meth:`compact` drops. Each step still gives them their new column."""
        state.self_mask[np.asarray(rows, np.int64)] = 0
        return state

    def select(self, state: DecoderState, rows: np.ndarray) -> DecoderState:
        """Only ``rows`` (int [kept], in the order given) of a running batch; the others are dropped.

        Source positions that no kept row attends to (the tail of the cross-attention keys/values)
        and cached positions that no kept row attends to (the leading columns) go too.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise ValueError("select() needs at least one row to keep.")
        enc = state.encoder
        encoder_mask = enc.attention_mask[rows]
        width = int(np.flatnonzero(encoder_mask.any(axis=0)).max()) + 1  # right-padded sources
        host_kv = (host_array(v)[rows, :, :width] for v in enc.cross_kv)  # copies (rows is an index array)
        used = state.self_mask[rows, :state.past_length]
        start = _leading_unused(used)
        past = state.past_length - start
        cache, mask = self._buffers(tuple(v[rows, :, start:state.past_length] for v in state.cache),
                                    used[:, start:], past, past + INITIAL_CAPACITY)
        return self._state(cache, mask, past, self._cross_from_host(host_kv, encoder_mask[:, :width]))

    def unused_columns(self, state: DecoderState) -> int:
        """Leading cached positions that no row attends to (what :meth:`compact` would drop)."""
        return _leading_unused(state.self_mask[:, :state.past_length])

    def compact(self, state: DecoderState) -> DecoderState:
        """Drop the leading cached positions that every row has masked (after long rows left): the used
        columns move left within the same buffers (no new memory, the binding stays); the columns they
        leave hold old, finite keys/values, masked and free."""
        start = self.unused_columns(state)
        if start == 0:
            return state
        past = state.past_length - start
        for buffer in state.cache:
            buffer[:, :, :past] = buffer[:, :, start:state.past_length]  # overlapping: numpy copies via a temporary
        state.self_mask[:, :past] = state.self_mask[:, start:state.past_length]
        state.self_mask[:, past:] = 0
        return replace(state, past_length=past)


# Encode a group at its longest length while its tokens stay within this factor of its real ones. The encoder is
# compute-bound even on short sources, so every padded token costs about what a real one does: side by side
# (2026-12-05, 2 threads, 8 sources, ms per real token), 1.1 took 0.87-0.90x the time of 1.25 on sources of
# 32-256 tokens (t5-small and flan-t5-base shapes) and 0.99x on 8-40 tokens; tighter (1.0001) or one row at a
# time was no faster.
LENGTH_SLACK = 1.1


def length_groups(attention_mask: np.ndarray) -> list[np.ndarray] | None:
    """The rows of a right-padded batch [rows, src_len] in groups of similar length (longest first), so that
    each group, run at its own longest length, computes at most ``LENGTH_SLACK`` times its real tokens; None
    where one pass pads no more than that, or where the batch is not right-padded."""
    rows, width = attention_mask.shape
    lengths = attention_mask.sum(axis=1)
    if rows < 2 or LENGTH_SLACK * lengths.sum() >= rows * width:
        return None
    if not np.array_equal(attention_mask != 0, np.arange(width) < lengths[:, None]):
        return None  # left padding, or holes: one pass as given
    groups, current = [], []
    for r in np.argsort(-lengths, kind="stable"):
        if current and lengths[current[0]] * (len(current) + 1) > LENGTH_SLACK * (lengths[current].sum() + lengths[r]):
            groups.append(np.array(current))
            current = []
        current.append(r)
    groups.append(np.array(current))
    return groups if len(groups) > 1 else None


def check_sources_fit(batch_mask: np.ndarray, encoder_output: EncoderOutput, source_rows) -> None:
    """The sources ``source_rows`` of ``encoder_output`` fit a batch whose encoder mask is ``batch_mask``
    [rows, width] (``fill``); ValueError otherwise."""
    source_mask = encoder_output.attention_mask[np.asarray(source_rows, np.int64)]  # right-padded
    width, new_width = batch_mask.shape[1], int(np.flatnonzero(source_mask.any(axis=0)).max()) + 1
    if new_width > width:
        raise ValueError(f"the new sources ({new_width} positions) are longer than the batch's ({width}); "
                         "use join().")


def write_sources(host_kv: Sequence[np.ndarray], mask: np.ndarray, rows: np.ndarray, encoder_output: EncoderOutput,
                  source_rows) -> None:
    """Batch rows ``rows`` take ``encoder_output``'s rows ``source_rows``, in place: their cross keys/values in
    ``host_kv`` (each [rows, heads, width, d_kv]) and their encoder mask in ``mask`` [rows, width], zero past
    the new sources' width (checked by :func:`check_sources_fit`)."""
    source_rows = np.asarray(source_rows, np.int64)
    source_mask = encoder_output.attention_mask[source_rows]
    used = int(np.flatnonzero(source_mask.any(axis=0)).max()) + 1
    for host, new in zip(host_kv, encoder_output.cross_kv):
        host[rows, :, :used] = host_array(new)[source_rows, :, :used]
        host[rows, :, used:] = 0
    mask[rows] = 0
    mask[rows, :used] = source_mask[:, :used]


def _pad_axis(array: np.ndarray, axis: int, width: int) -> np.ndarray:
    """``array`` zero-padded at the end of ``axis`` to ``width``."""
    if array.shape[axis] == width:
        return array
    pad = [(0, 0)] * array.ndim
    pad[axis] = (0, width - array.shape[axis])
    return np.pad(array, pad)


def _leading_unused(self_mask: np.ndarray) -> int:
    """How many leading columns of a [rows, past] mask are 0 in every row."""
    used = np.flatnonzero(self_mask.any(axis=0))
    return int(used[0]) if len(used) else self_mask.shape[1]
