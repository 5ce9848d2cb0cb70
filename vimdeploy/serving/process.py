"""`vimdeploy serve` in a child process on free loopback ports: for tests and benchmarks."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from ..errors import VimdeployError


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n ports the kernel calls free now (bound to port 0 together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ServeProcess:
    """`python -m vimdeploy serve ARTIFACT --json ...`; returns once the model is ready.

    Its stderr (Triton's log with --verbose) goes to `log`; `ports` (HTTP, gRPC, metrics)
    default to free ones; `env` is added to this environment. Use `stop()` (or the context
    manager) to end it: the server must never outlive its caller.
    """

    def __init__(
        self,
        artifact,
        *options,
        log: str | Path,
        startup_timeout_s: float = 240.0,
        ports: tuple[int, int, int] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.host = "127.0.0.1"
        self.http_port, self.grpc_port, self.metrics_port = ports or free_ports(3, self.host)
        cmd = [
            sys.executable,
            "-m",
            "vimdeploy",
            "serve",
            str(artifact),
            "--host",
            self.host,
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            "--json",
            *map(str, options),
        ]
        root = str(Path(__file__).resolve().parents[2])  # this vimdeploy, also from a source tree
        env = {
            **os.environ,
            **(env or {}),
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
        }
        self.log = Path(log)
        self._log_file = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=self._log_file, text=True)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.info = self._next_event(startup_timeout_s)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.ports = (self.http_port, self.grpc_port, self.metrics_port)
        self.http = f"{self.host}:{self.http_port}"
        self.grpc = f"{self.host}:{self.grpc_port}"
        self.metrics = f"http://{self.host}:{self.metrics_port}/metrics"

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next_event(self, timeout_s: float) -> dict:
        """The next JSON object on stdout: the ready event is one line, the final summary several."""
        text = ""
        while True:
            try:
                line = self._lines.get(timeout=timeout_s)
            except queue.Empty:
                raise VimdeployError(
                    f"vimdeploy serve printed nothing for {timeout_s:.0f} s; log:\n" + self.log_tail()
                ) from None
            if line is None:
                code = self.proc.wait(30)
                raise VimdeployError(f"vimdeploy serve exited (status {code}); log:\n" + self.log_tail())
            text += line
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                continue

    def log_tail(self, n: int = 40) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 90.0) -> tuple[int, dict | None]:
        """Signal it, wait; returns (exit status, its final JSON summary or None)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        summary = None
        if sig != signal.SIGKILL:
            try:
                summary = self._next_event(5)
            except VimdeployError:
                summary = None
        self._log_file.close()
        return self.proc.returncode, summary

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
