"""What ``t5ort.bench.run`` returns: frozen records of what was measured, with the raw per-run seconds."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Workload:
    batch: int
    num_beams: int
    new_tokens: int  # forced: min = max new tokens

    @property
    def name(self) -> str:
        return f"batch {self.batch}" + (f", {self.num_beams} beams" if self.num_beams > 1 else "")


@dataclass(frozen=True)
class SystemInfo:
    label: str  # as in the tables: "t5ort int8", "PyTorch", ...
    kind: str  # t5ort, t5ort-bare, pytorch, optimum, ctranslate2, ctranslate2-int8
    artifact: str  # the directory it loads
    artifact_mb: float  # the files it reads at load, MB (1e6 bytes)
    load_seconds: float
    rss_after_load_mb: float
    peak_rss_mb: float  # the worker process's peak RSS over the whole run (load included), MB (2**20 bytes)
    python: str = ""  # the interpreter its worker ran under (a peer's own with peer_python)
    python_version: str = ""
    versions: dict = field(default_factory=dict)  # its packages' versions there: torch, transformers, optimum, ...
    precision: str = ""  # of its weights: fp32, int8, int4, fp16; a floor's too


@dataclass(frozen=True)
class Measurement:
    """One system at one workload: ``seconds`` of each timed whole call, ``first_token_seconds`` of each
    one-token call (same inputs, right after it in the same round), in run order."""

    system: str
    workload: Workload
    seconds: tuple[float, ...]
    first_token_seconds: tuple[float, ...]
    token_agreement: float | None  # share of generated tokens equal to the reference system's; None: no tokens
    other_cpu_seconds: float  # CPU time other processes took during this workload (all systems)
    cpu_seconds: tuple[float, ...] = ()  # the worker's CPU time (all its threads) during each timed call
    source_tokens: int = 0  # real (unpadded) source tokens in the batch

    @property
    def decode_ms_per_step(self) -> float | None:
        """A decoding step without the encoder: the median over rounds of (t_N - t_1) / (N - 1), where t_N is
        the whole call's time and t_1 the one-token call's of the same round. None with one new token or
        without one-token calls."""
        n = self.workload.new_tokens
        if n < 2 or not self.first_token_seconds or len(self.first_token_seconds) != len(self.seconds):
            return None
        return 1000 * statistics.median((t - t1) / (n - 1) for t, t1 in zip(self.seconds, self.first_token_seconds))

    @property
    def encoder_ms(self) -> float | None:
        """The once-per-call part: the one-token call's median time less one decoding step. That is the encoder,
        plus whatever else a system does once per call (its setup; for a peer that projects the encoder output
        into the cross-attention keys and values at the first step, that projection). Noise can make it
        negative where the encoder is small against a step; it is reported as measured."""
        step = self.decode_ms_per_step
        return None if step is None else self.first_token_ms - step

    @property
    def encoder_ms_per_source_token(self) -> float | None:
        encoder = self.encoder_ms
        return None if encoder is None or not self.source_tokens else encoder / self.source_tokens

    @property
    def cpu_ms_per_step(self) -> float | None:
        """Median CPU time of a call (all threads) / new tokens: less sensitive than wall time to other
        processes taking the cores, though not to their use of caches and memory bandwidth."""
        return 1000 * statistics.median(self.cpu_seconds) / self.workload.new_tokens if self.cpu_seconds else None

    @property
    def ms_per_step(self) -> float:
        """Median whole-call time (encoder included) / new tokens."""
        return 1000 * statistics.median(self.seconds) / self.workload.new_tokens

    @property
    def ms_per_step_range(self) -> tuple[float, float]:
        """The spread of the runs: (fastest, slowest) ms/step."""
        n = self.workload.new_tokens
        return 1000 * min(self.seconds) / n, 1000 * max(self.seconds) / n

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens (batch x new tokens; beams not counted) per second, at the median call."""
        return self.workload.batch * self.workload.new_tokens / statistics.median(self.seconds)

    @property
    def first_token_ms(self) -> float | None:
        return 1000 * statistics.median(self.first_token_seconds) if self.first_token_seconds else None


@dataclass(frozen=True)
class BenchResult:
    machine: dict
    settings: dict
    reference: str  # the system whose tokens the others are compared with
    systems: tuple[SystemInfo, ...]
    measurements: tuple[Measurement, ...]
    skipped: dict  # system -> why it did not run

    def measurement(self, system: str, workload: Workload) -> Measurement | None:
        for m in self.measurements:
            if m.system == system and m.workload == workload:
                return m
        return None

    def system(self, label: str) -> SystemInfo | None:
        return next((s for s in self.systems if s.label == label), None)

    def floor_ratio(self, system: str, workload: Workload) -> float | None:
        """``system``'s decode ms/step over the floor's of its precision (int8's for int8 and int4, fp32's
        otherwise) at ``workload``; None without floors or without the split."""
        info = self.system(system)
        if info is None or info.kind.startswith("floor"):
            return None
        floor = self.measurement("floor int8" if info.precision in ("int8", "int4") else "floor fp32", workload)
        mine = self.measurement(system, workload)
        if floor is None or mine is None or not floor.decode_ms_per_step or mine.decode_ms_per_step is None:
            return None
        return mine.decode_ms_per_step / floor.decode_ms_per_step

    @property
    def workloads(self) -> list[Workload]:
        seen: list[Workload] = []
        for m in self.measurements:
            if m.workload not in seen:
                seen.append(m.workload)
        return seen

    def to_dict(self) -> dict:
        """Everything, JSON-ready: the raw seconds and the derived medians, spreads and rates."""
        rows = []
        for m in self.measurements:
            lo, hi = m.ms_per_step_range
            rows.append({**asdict(m), "workload": {**asdict(m.workload), "name": m.workload.name},
                         "ms_per_step": m.ms_per_step, "ms_per_step_min": lo, "ms_per_step_max": hi,
                         "tokens_per_s": m.tokens_per_s, "first_token_ms": m.first_token_ms,
                         "cpu_ms_per_step": m.cpu_ms_per_step, "decode_ms_per_step": m.decode_ms_per_step,
                         "encoder_ms": m.encoder_ms, "encoder_ms_per_source_token": m.encoder_ms_per_source_token,
                         "floor_ratio": self.floor_ratio(m.system, m.workload)})
        return {"machine": self.machine, "settings": self.settings, "reference": self.reference,
                "systems": [asdict(s) for s in self.systems], "measurements": rows, "skipped": self.skipped}
