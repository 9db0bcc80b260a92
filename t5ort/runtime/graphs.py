"""The inference seam: the one object that runs the ONNX graphs.

``encode(ids, mask)`` and ``step(tokens, state) -> (logits, state)``. It owns the
sessions, the tensor names (from the manifest) and the cache layout; the decoding
loop only ever sees numpy logits.

The encoder graph computes the cross-attention keys/values of every decoder
layer once; the decoder graph runs every step, the first one with an empty
self-attention cache. Every run goes through ONNX Runtime IO binding, on the CPU
and on CUDA alike, so there is a single run path: cache tensors and
cross-attention keys/values stay as ``OrtValue``s on the device between steps,
and only each step's [N, vocab] logits come back to the host.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from .errors import ArtifactError, ProviderError
from .manifest import GraphSpec, Manifest, file_sha256

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class EncoderOutput:
    """The encoder's result for one batch: cross-attention keys/values (on the device) and the source mask."""

    cross_kv: tuple[ort.OrtValue, ...]  # [key_0, value_0, key_1, ...], each [batch, heads, src_len, d_kv]
    attention_mask: np.ndarray  # [batch, src_len] int64
    host_kv: tuple[np.ndarray, ...] | None = None  # writable host arrays that cross_kv shares (in-flight batching)

    @property
    def batch_size(self) -> int:
        return int(self.attention_mask.shape[0])


@dataclass(frozen=True)
class DecoderState:
    """What one decoding run carries from step to step.

    ``binding`` holds the inputs that never change (the encoder mask and the
    cross-attention keys/values); ``self_kv`` is the growing
    self-attention cache, [key_0, value_0, key_1, ...], each
    ``[batch, heads, past_len, d_kv]``.

    ``self_mask`` int64 [batch, past_len]: which cached positions each row attends to
    (0: padding of a row that joined a running batch late); None: all of them, as in
    ``generate``, ``score`` and ``stream``. ``encoder``: the (padded) encoder output the
    binding holds, kept where rows may join or leave (:meth:`T5Graphs.join`).
    """

    binding: ort.IOBinding
    self_kv: tuple[ort.OrtValue, ...]
    past_length: int
    self_mask: np.ndarray | None = None
    encoder: EncoderOutput | None = None


def host_array(value: ort.OrtValue) -> np.ndarray:
    """A CPU ``OrtValue`` as a numpy array without a copy (through DLPack; the array keeps the value
    alive), or a host copy where that is not possible (CUDA, an onnxruntime without DLPack)."""
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
    """The options of a t5ort session of ``role`` (``"encoder"`` or ``"decoder"``: the with-past decoder
    and the in-flight step graph); benchmarks give the peers' onnxruntime sessions the decoder's.

    What the intra-op threads do when they run out of work, with ``spin`` (``load(spin=...)``):

    - all sessions: they spin between the ops of one run (a blocked thread wakes slowly, and a run
      has hundreds of small parallel ops);
    - the encoder's: they sleep as soon as its run ends (``session.force_spinning_stop``), so that they
      never spin on the cores the decoder's threads need next;
    - the decoders': they spin for at most ``SPIN_US`` after a run (``session.intra_op.spin_duration_us``),
      which covers the loop's Python between two steps (0.1-1.5 ms), then sleep: an idle runtime costs
      no CPU 1 ms after a call, where onnxruntime's default spins for ~20 ms per thread.

    ``spin=False``: they never spin (``session.intra_op.allow_spinning=0``), for machines whose cores other
    work keeps busy. Why (``benchmarks/thread_pools.py``, t5-small shape, 2 threads, 32 forced tokens,
    each policy in its own process, interleaved runs; README, How it works): on the idle machine this
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


class T5Graphs:
    """Runs the encoder and merged-decoder graphs described by a manifest."""

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
        self.manifest = manifest
        self._verify = verify
        self.provider = provider
        self._device = "cuda" if provider == "cuda" else "cpu"
        self._device_id = device_id
        self._dtype = _NUMPY_DTYPES[manifest.dtype]  # of the caches; the logits are float32 (manifest-declared)
        self._logits_dtype = np.dtype(manifest.decoder.tensor(manifest.decoder_io.logits).dtype)
        options = session_options(threads, "encoder", spin)
        decoding = session_options(threads, "decoder", spin)  # the graphs that run once per step
        providers = _providers(provider, device_id)
        self._check_weights(directory)
        self.encoder_session = self._open(directory, manifest.encoder, options, providers)
        self.decoder_session = self._open(directory, manifest.decoder, decoding, providers)
        # The in-flight step graph keeps its cache in host buffers: CPU only (CUDA batches use the decoder).
        # Opened on first use: its session holds its own pre-packed copy of the decoder's weights (149 MB
        # of RSS on the t5-small shape), which a runtime that never batches in flight does not need.
        self._step = (directory, decoding, providers) if manifest.step is not None and provider == "cpu" else None
        self._step_session: ort.InferenceSession | None = None
        self._step_lock = threading.Lock()
        if self._step is not None:  # a missing or changed file is still reported at load
            self._check_file(directory / manifest.step.file, manifest.step.sha256, "graph file")
        io, eio = manifest.decoder_io, manifest.encoder_io
        self._cross = [n for pair in zip(eio.cross_key, eio.cross_value) for n in pair]
        self._past_self = [n for pair in zip(io.past_self_key, io.past_self_value) for n in pair]
        self._past_cross = [n for pair in zip(io.past_cross_key, io.past_cross_value) for n in pair]
        self._present_self = [n for pair in zip(io.present_self_key, io.present_self_value) for n in pair]

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
        """The shared weights file, where the export has one (older-style graphs hold their weights inline)."""
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
        """Run the encoder once. ``input_ids``/``attention_mask``: int64 [batch, src_len]."""
        io = self.manifest.encoder_io
        binding = self.encoder_session.io_binding()
        binding.bind_cpu_input(io.input_ids, input_ids)
        binding.bind_cpu_input(io.attention_mask, attention_mask)
        for name in self._cross:
            binding.bind_output(name, self._device, self._device_id)
        self.encoder_session.run_with_iobinding(binding)
        return EncoderOutput(cross_kv=tuple(binding.get_outputs()), attention_mask=attention_mask)

    # ---- decoder -------------------------------------------------------------

    def start(self, encoder_output: EncoderOutput) -> DecoderState:
        """A fresh decoding state: the encoder's cross keys/values bound, an empty self-attention cache."""
        io = self.manifest.decoder_io
        g = self.manifest.geometry
        binding = self.decoder_session.io_binding()
        binding.bind_cpu_input(io.encoder_attention_mask, encoder_output.attention_mask)
        for name, value in zip(self._past_cross, encoder_output.cross_kv):
            binding.bind_ortvalue_input(name, value)
        empty = np.zeros((encoder_output.batch_size, g.num_heads, 0, g.d_kv), dtype=self._dtype)
        for name in self._past_self:  # the first step's cache: no positions yet
            binding.bind_cpu_input(name, empty)
        return DecoderState(binding=binding, self_kv=(), past_length=0, encoder=encoder_output)

    def step(self, tokens: np.ndarray, state: DecoderState,
             out: np.ndarray | None = None) -> tuple[np.ndarray, DecoderState]:
        """Feed one token per row (int64 [batch]); return that step's raw logits [batch, vocab].

        ``out``: a C-contiguous float32 [batch, vocab] host array that onnxruntime
        writes the logits into (and that is returned), so that a caller keeping every
        step's logits spends no copy on them.
        """
        logits, state = self.forward(np.asarray(tokens).reshape(-1, 1), state,
                                     out=None if out is None else out[:, None, :])
        return logits[:, -1, :], state

    def forward(self, decoder_input_ids: np.ndarray, state: DecoderState,
                out: np.ndarray | None = None) -> tuple[np.ndarray, DecoderState]:
        """Feed ``decoder_input_ids`` [batch, T] after the cached positions; return raw logits [batch, T, vocab].

        T > 1 at the first call is one teacher-forced pass (causal within the T positions).
        ``out``: as in :meth:`step`, [batch, T, vocab].
        """
        io = self.manifest.decoder_io
        binding = state.binding
        batch, new = decoder_input_ids.shape
        binding.bind_cpu_input(io.input_ids, np.ascontiguousarray(decoder_input_ids, dtype=np.int64))
        if state.self_mask is None:  # every cached and new position attended
            self_mask = None
            binding.bind_cpu_input(io.self_attention_mask, np.ones((batch, state.past_length + new), np.int64))
        else:  # [batch, past + new]: the new positions are always attended
            self_mask = np.concatenate([state.self_mask, np.ones((batch, new), np.int64)], axis=1)
            binding.bind_cpu_input(io.self_attention_mask, self_mask)
        for name, value in zip(self._past_self, state.self_kv):  # nothing to bind at the first step
            binding.bind_ortvalue_input(name, value)
        if out is None:
            binding.bind_output(io.logits, "cpu")
        else:
            expected = (*decoder_input_ids.shape, self.manifest.geometry.vocab_size)
            if out.shape != expected or out.dtype != self._logits_dtype or not out.flags.c_contiguous:
                raise ValueError(f"out must be a C-contiguous {self._logits_dtype.name} array of shape "
                                 f"{expected}, got {out.dtype} {out.shape}.")
            binding.bind_output(io.logits, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        for name in self._present_self:
            binding.bind_output(name, self._device, self._device_id)
        self.decoder_session.run_with_iobinding(binding)
        logits, *self_kv = binding.get_outputs()
        binding.clear_binding_outputs()
        new_state = replace(state, self_kv=tuple(self_kv), past_length=state.past_length + new, self_mask=self_mask)
        return host_array(logits) if out is None else out, new_state

    # ---- batch reshaping (beams, return sequences) ------------------------------

    def _to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._device, self._device_id)

    def expand(self, encoder_output: EncoderOutput, times: int | Sequence[int]) -> EncoderOutput:
        """Repeat every row ``times`` times (row i -> rows i*times .. i*times+times-1), once, before decoding.
        ``times`` may also give each row its own count (in-flight batching: each member's beams or samples)."""
        if np.all(np.asarray(times) == 1):
            return encoder_output
        cross_kv = tuple(self._to_device(np.repeat(host_array(value), times, axis=0))  # [batch*times, heads, src, d_kv]
                         for value in encoder_output.cross_kv)
        return EncoderOutput(cross_kv, np.repeat(encoder_output.attention_mask, times, axis=0))

    def reorder(self, state: DecoderState, source: np.ndarray) -> DecoderState:
        """Self-attention cache rows taken from ``source`` [rows] (beam search). Cross keys/values stay:
        a beam's source row always belongs to the same input, whose cross keys/values are the same."""
        if np.array_equal(source, np.arange(len(source))):
            return state
        kv = tuple(self._to_device(host_array(value)[source]) for value in state.self_kv)  # [rows, heads, past, d_kv]
        return replace(state, self_kv=kv, self_mask=None if state.self_mask is None else state.self_mask[source])

    # ---- in-flight batching: rows join and leave a running batch --------------------

    @property
    def step_session(self) -> ort.InferenceSession | None:
        """The in-flight step graph's session, opened on first use; None where the export has none (or on CUDA)."""
        if self._step is not None and self._step_session is None:
            with self._step_lock:
                if self._step_session is None:
                    directory, options, providers = self._step
                    self._step_session = self._open(directory, self.manifest.step, options, providers)
        return self._step_session

    def inflight(self, step_graph: bool = True):
        """The object whose join/fill/step/reorder/select/compact an in-flight batch runs: the export's
        step graph (:class:`~t5ort.runtime.stepcache.StepGraphs`, no cache copy per step) where it has
        one and ``step_graph``, else these graphs' own methods below (the with-past decoder)."""
        if step_graph and self.step_session is not None:
            from .stepcache import StepGraphs

            return StepGraphs(self, self.step_session)
        return self

    def _rebind(self, encoder_output: EncoderOutput, self_kv: tuple[ort.OrtValue, ...], past_length: int,
                self_mask: np.ndarray) -> DecoderState:
        """A state over new rows: a fresh binding of ``encoder_output``, the given cache and mask."""
        state = self.start(encoder_output)
        return replace(state, self_kv=self_kv, past_length=past_length, self_mask=self_mask)

    def join(self, state: DecoderState | None, encoder_output: EncoderOutput) -> DecoderState:
        """``state``'s rows followed by ``encoder_output``'s rows, which have no history yet.

        The new rows' self-attention cache is left-padded to the running rows' past length
        (zeros, masked out: they attend only to what they feed from now on); the cross-attention
        keys/values of both are padded to the longer source, with the encoder mask. T5's
        position bias depends only on query-key distances, so a row gets the logits it would
        get alone. ``state`` None: a batch of the new rows only.
        """
        if state is None:
            return replace(self.start(encoder_output),
                           self_mask=np.zeros((encoder_output.batch_size, 0), np.int64))
        old, new = state.encoder, encoder_output
        if old is None:
            raise ValueError("join() needs a state made by start() or join() (it keeps the encoder output).")
        width = max(old.attention_mask.shape[1], new.attention_mask.shape[1])
        host_kv = tuple(np.concatenate([_pad_axis(host_array(a), 2, width), _pad_axis(host_array(b), 2, width)])
                        for a, b in zip(old.cross_kv, new.cross_kv))  # [rows + new, heads, width, d_kv]
        encoder_mask = np.concatenate([_pad_axis(old.attention_mask, 1, width),
                                       _pad_axis(new.attention_mask, 1, width)])  # [rows + new, width]
        past, rows = state.past_length, new.batch_size
        self_mask = state.self_mask if state.self_mask is not None else np.ones((old.batch_size, past), np.int64)
        self_mask = np.concatenate([self_mask, np.zeros((rows, past), np.int64)])  # [rows + new, past]
        self_kv = ()
        if state.self_kv:
            self_kv = tuple(self._to_device(np.concatenate([host_array(v), np.zeros((rows, *v.shape()[1:]),
                                                                                     self._dtype)]))
                            for v in state.self_kv)  # [rows + new, heads, past, d_kv]
        return self._rebind(self._cross_from_host(host_kv, encoder_mask), self_kv, past, self_mask)

    def _cross_from_host(self, host_kv: tuple[np.ndarray, ...], attention_mask: np.ndarray) -> EncoderOutput:
        """Cross keys/values from host arrays; on the CPU the OrtValues share their memory (no copy)."""
        host_kv = tuple(np.ascontiguousarray(h) for h in host_kv)
        return EncoderOutput(tuple(self._to_device(h) for h in host_kv), attention_mask,
                             host_kv if self._device == "cpu" else None)

    def fill(self, state: DecoderState, rows: np.ndarray, encoder_output: EncoderOutput,
             source_rows: np.ndarray) -> DecoderState:
        """Rows ``rows`` of a running batch (rows that are done) start over as ``encoder_output``'s rows
        ``source_rows``, which have no history yet: no copy of the cache.

        Their cached positions are masked out (the old keys/values stay, never attended to), their
        cross-attention keys/values and encoder mask are written in place (on the CPU). The new
        sources must fit the batch's source width (:meth:`join` otherwise).
        """
        enc = state.encoder
        if enc is None or state.self_mask is None:
            raise ValueError("fill() needs a state made by join() (it keeps the encoder output and the mask).")
        rows = np.asarray(rows, np.int64)
        check_sources_fit(enc.attention_mask, encoder_output, source_rows)
        in_place = enc.host_kv is not None
        host_kv = enc.host_kv if in_place else tuple(np.array(host_array(v)) for v in enc.cross_kv)
        mask = enc.attention_mask.copy()  # [rows, width]
        write_sources(host_kv, mask, rows, encoder_output, source_rows)
        self_mask = state.self_mask.copy()
        self_mask[rows] = 0  # [rows, past]: the old history is not theirs
        io = self.manifest.decoder_io
        state.binding.bind_cpu_input(io.encoder_attention_mask, mask)
        if in_place:
            encoder = EncoderOutput(enc.cross_kv, mask, host_kv)
        else:
            encoder = self._cross_from_host(host_kv, mask)
            for name, value in zip(self._past_cross, encoder.cross_kv):
                state.binding.bind_ortvalue_input(name, value)
        return replace(state, encoder=encoder, self_mask=self_mask)

    def take(self, encoder_output: EncoderOutput, rows: np.ndarray) -> EncoderOutput:
        """Only ``rows`` of an encoder output (before decoding)."""
        return EncoderOutput(tuple(self._to_device(host_array(v)[rows]) for v in encoder_output.cross_kv),
                             encoder_output.attention_mask[rows])

    def select(self, state: DecoderState, rows: np.ndarray) -> DecoderState:
        """Only ``rows`` (int [kept], in the order given) of a running batch; the others are dropped.

        Source positions that no kept row attends to (the tail of the cross-attention keys/values)
        and cached positions that no kept row attends to (the leading columns) go too.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if state.encoder is None:
            raise ValueError("select() needs a state made by start() or join() (it keeps the encoder output).")
        if len(rows) == 0:
            raise ValueError("select() needs at least one row to keep.")
        encoder_mask = state.encoder.attention_mask[rows]
        width = int(np.flatnonzero(encoder_mask.any(axis=0)).max()) + 1  # right-padded sources
        host_kv = tuple(host_array(v)[rows, :, :width] for v in state.encoder.cross_kv)
        self_mask = (np.ones((len(rows), state.past_length), np.int64) if state.self_mask is None
                     else state.self_mask[rows])
        start = _leading_unused(self_mask)
        self_kv = tuple(self._to_device(host_array(v)[rows, :, start:]) for v in state.self_kv)
        return self._rebind(self._cross_from_host(host_kv, np.ascontiguousarray(encoder_mask[:, :width])), self_kv,
                            state.past_length - start, np.ascontiguousarray(self_mask[:, start:]))

    def unused_columns(self, state: DecoderState) -> int:
        """Leading cached positions that no row attends to (what :meth:`compact` would drop)."""
        return 0 if state.self_mask is None else _leading_unused(state.self_mask)

    def compact(self, state: DecoderState) -> DecoderState:
        """Drop the leading cached positions that every row has masked (after long rows left)."""
        start = self.unused_columns(state)
        if start == 0:
            return state
        self_kv = tuple(self._to_device(host_array(v)[:, :, start:]) for v in state.self_kv)  # [rows, heads, past', d_kv]
        return replace(state, self_kv=self_kv, past_length=state.past_length - start,
                       self_mask=np.ascontiguousarray(state.self_mask[:, start:]))

    # ---- speculative decoding ---------------------------------------------------

    def truncate(self, state: DecoderState, past_length: int) -> DecoderState:
        """The state with its self-attention cache cut back to the first ``past_length`` positions
        (the tokens a verify pass fed beyond them were not kept). Cross keys/values stay."""
        if not 0 <= past_length <= state.past_length:
            raise ValueError(f"past_length must lie in [0, {state.past_length}], got {past_length}.")
        if past_length == state.past_length:
            return state
        import dataclasses

        kv = tuple(self._to_device(host_array(value)[:, :, :past_length])  # [batch, heads, past_length, d_kv]
                   for value in state.self_kv)
        mask = getattr(state, "self_mask", None)  # [batch, past]
        changes = {} if mask is None else {"self_mask": mask[:, :past_length]}
        return dataclasses.replace(state, self_kv=kv, past_length=past_length, **changes)


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
