"""A server as a child process on a loopback port: the one way the benchmarks and the tests start ``t5ort serve``
(or the Optimum baseline server), wait until ``/health`` answers, read its log and stop it with SIGTERM.

    server = ServerProcess(serve_command("out/fp32", free_port(), "--threads", "2"), log=Path("serve.log"))
    with server.client() as http:
        http.post("/generate", json={"inputs": "..."})
    server.stop()

The server's output goes to a file, never to a pipe: a pipe nobody reads fills up (64 KiB on Linux) and blocks
the server at its next log line. httpx is imported only when a server is started (it is in the test extra).
"""

from __future__ import annotations

import ctypes
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# Below this, ports the kernel hands out for "any port" (bind to 0) never come: ip_local_port_range's start on Linux.
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000  # Ray's workers take 10002-19999 by default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago: outside the kernel's ephemeral range where it is known
    (Linux), so that no process asking for any port (Ray's agents and workers do, as they start) is handed it
    between this check and the server's own bind; an ephemeral port otherwise."""
    try:
        highest = int(_EPHEMERAL.read_text().split()[0]) - 1
    except (OSError, ValueError, IndexError):
        highest = 0
    for port in random.sample(range(_LOWEST, highest + 1), min(64, max(0, highest + 1 - _LOWEST))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model: str | Path, port: int, *args: str) -> list[str]:
    """``t5ort serve MODEL --port PORT ARGS...`` run by this Python."""
    return [sys.executable, "-m", "t5ort.cli", "serve", str(model), "--port", str(port), *args]


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text ``text`` (``labels`` as written between the braces), 0 if absent."""
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, so the server never outlives it (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ServerProcess:
    """``command`` (a server listening on ``url``) as a child process, its stdout and stderr in ``log``.

    log: a file for the server's output (an anonymous temporary file when None).
    env: variables added to this process's environment. scheme and client: the URL scheme and httpx.Client
    options (``verify``, ``cert``) that the readiness poll and :meth:`client` use. wait: poll ``/health``
    until it answers 200 (for at most ``ready_timeout`` seconds) before returning; False returns at once, for a
    server that should not start or to watch it start. die_with_parent: the server gets SIGTERM when this
    process dies (for long unattended runs).
    """

    def __init__(self, command: list[str], port: int, *, log: Path | None = None, env: dict | None = None,
                 scheme: str = "http", client: dict | None = None, wait: bool = True, ready_timeout: float = 300,
                 die_with_parent: bool = False):
        self.command = command
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.client_options = client or {}
        self.log = log
        self._log_file = open(log, "wb") if log is not None else tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})},
                                        preexec_fn=_die_with_parent if die_with_parent else None)
        if wait:
            self.wait_ready(ready_timeout)

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, **options):
        """An httpx.Client on the server's URL (30 s timeout), with the constructor's ``client`` options."""
        import httpx

        return httpx.Client(base_url=self.url, timeout=30, **{**self.client_options, **options})

    def wait_ready(self, timeout: float = 300) -> None:
        """Return once ``/health`` answers 200; RuntimeError with the log's tail if the server exits or the time
        runs out first."""
        import httpx

        deadline = time.monotonic() + timeout
        with self.client() as http:
            while True:
                try:
                    if http.get("/health", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{' '.join(self.command[:5])} did not start:\n{self.output()[-3000:]}")
                time.sleep(0.05)

    def output(self) -> str:
        """What the server has written so far (stdout and stderr)."""
        if self.log is not None:
            if not self._log_file.closed:
                self._log_file.flush()
            return self.log.read_text(errors="replace")
        if self._log_file.closed:
            return ""
        self._log_file.flush()
        self._log_file.seek(0)
        return self._log_file.read().decode(errors="replace")

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of the server's ``/metrics`` (see :func:`metric`)."""
        with self.client() as http:
            return metric(http.get("/metrics").text, name, labels)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self._log_file.close()
        return self.process.returncode
