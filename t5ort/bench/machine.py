"""What a benchmark ran on, and how busy the machine was while it ran."""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Physical cores (psutil where installed; else logical CPUs)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def machine(threads: int, **versions: str) -> dict[str, str]:
    """The CPU, thread count and package versions the numbers were measured with."""
    import onnxruntime

    return {
        "cpu": cpu_name(),
        "logical cpus": str(os.cpu_count()),
        "threads used": str(threads),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        **versions,
    }


def proc_status_mb(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MB (2**20 bytes); VmHWM falls back to getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if field == "VmHWM":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    raise KeyError(field)


def busy_minus_own() -> float:
    """CPU seconds the whole machine was busy since boot (/proc/stat) minus this process's and its reaped
    children's. Busy includes steal: time the hypervisor gave this VM's CPUs to other guests, which
    slows a timing as much as another process would and which no process list shows."""
    fields = Path("/proc/stat").read_text().split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[:7])
    steal = int(fields[7]) if len(fields) > 7 else 0
    t = os.times()
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return busy - (t.user + t.system + t.children_user + t.children_system)


def own_cpu_seconds() -> float:
    """This process's CPU seconds so far (user + system, all its threads)."""
    t = os.times()
    return t.user + t.system


def process_cpu_seconds(pid: int) -> float:
    """utime + stime (+ reaped children's) of a live process, seconds (0 if it is gone)."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in rest[11:15]) / os.sysconf("SC_CLK_TCK")


class OtherCPU:
    """CPU seconds that processes other than this one and ``pids`` (live workers) used since ``start()``.

    Anything well above zero means the timings shared the CPUs with other work. Linux only; elsewhere
    it reads nothing (``available`` is False).
    """

    def __init__(self, pids: list[int] | None = None):
        self.pids = list(pids or [])
        self.available = Path("/proc/stat").is_file()
        self.start()

    def _reading(self) -> float:
        if not self.available:
            return 0.0
        return busy_minus_own() - sum(process_cpu_seconds(p) for p in self.pids)

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), self._reading()

    def read(self) -> dict:
        wall, other = time.perf_counter() - self.t0, self._reading() - self.c0
        return {"seconds": other, "wall_seconds": wall, "share": other / (max(wall, 1e-9) * (os.cpu_count() or 1)),
                "measured": self.available}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
