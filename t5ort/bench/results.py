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


@dataclass(frozen=True)
class Measurement:
    """One system at one workload: ``seconds`` of each timed whole call, ``first_token_seconds`` of each
    one-token call (same inputs), in run order."""

    system: str
    workload: Workload
    seconds: tuple[float, ...]
    first_token_seconds: tuple[float, ...]
    token_agreement: float | None  # share of generated tokens equal to the reference system's; None: no tokens
    other_cpu_seconds: float  # CPU time other processes took during this workload (all systems)
    cpu_seconds: tuple[float, ...] = ()  # the worker's CPU time (all its threads) during each timed call

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
                         "cpu_ms_per_step": m.cpu_ms_per_step})
        return {"machine": self.machine, "settings": self.settings, "reference": self.reference,
                "systems": [asdict(s) for s in self.systems], "measurements": rows, "skipped": self.skipped}
