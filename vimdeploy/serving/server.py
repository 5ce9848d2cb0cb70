"""Start, watch and stop a Triton Inference Server: the `tritonserver` of the nvidia-pytriton wheel.

The wheel ships the server binary, its Python backend and one backend stub per Python
version; only the stub matching this interpreter is put in the backend folder we give the
server. Two things make the stub run this environment (measured, nvidia-pytriton 0.7.0):
  * PATH starts with this interpreter's folder: the stub's embedded Python finds its
    prefix (a virtual environment's site-packages) from `python3` on PATH;
  * LD_LIBRARY_PATH starts with this interpreter's LIBDIR: the stub links
    `libpython3.X.so.1.0` by soname, and where another libpython of the same minor version
    comes first (the system's 3.11.2 beside a pyenv 3.11.7) model initialisation fails with
    "'_thread.RLock' object has no attribute '_recursion_count'".
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import importlib.util
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import VimdeployError

#: header that unlocks the APIs only `vimdeploy serve` itself may use; its value is random per server
ADMIN_HEADER = "vimdeploy-admin"
#: Triton's APIs behind ADMIN_HEADER: loading and unloading models, registering shared memory (a
#: client could name any region of the host), changing trace and log settings
ADMIN_APIS = ("model-repository", "shared-memory", "trace", "logging")
#: header a client sends with `vimdeploy serve --api-key-env VAR` (value: the key)
API_KEY_HEADER = "vimdeploy-api-key"
#: the same over gRPC: Triton expects restricted-protocol headers with this prefix
GRPC_API_KEY_HEADER = "triton-grpc-protocol-" + API_KEY_HEADER
#: Triton's APIs behind API_KEY_HEADER; health stays open for load balancers' probes
API_KEY_APIS = ("inference", "metadata", "model-config", "statistics")
INSTALL_HINT = "pip install 'vimdeploy[serve]'  (nvidia-pytriton: Triton Inference Server for Linux x86-64/arm64)"


def triton_distribution() -> dict[str, Path]:
    """Where the nvidia-pytriton wheel keeps the server binary, Python backend, stub and libraries."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise VimdeployError(f"vimdeploy serve needs Triton Inference Server: {INSTALL_HINT}")
    package = Path(list(spec.submodule_search_locations)[0])
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = {
        "binary": root / "bin" / "tritonserver",
        "backend": root / "backends" / "python",
        "stub": root / "python_backend_stubs" / version / "triton_python_backend_stub",
        # wheel install; an editable pytriton keeps them in tritonserver/external_libs
        "libs": package.parent / "nvidia_pytriton.libs"
        if (package.parent / "nvidia_pytriton.libs").is_dir()
        else root / "external_libs",
    }
    if not paths["binary"].is_file():
        raise VimdeployError(f"{paths['binary']} is missing: reinstall nvidia-pytriton ({INSTALL_HINT}).")
    if not paths["stub"].is_file():
        shipped = sorted(p.name for p in (root / "python_backend_stubs").iterdir()) if root.is_dir() else []
        raise VimdeployError(
            f"nvidia-pytriton has no Python backend stub for Python {version} "
            f"(it ships {', '.join(shipped) or 'none'}): use one of those Pythons."
        )
    return paths


def prepare_backends(workspace: Path, dist: dict[str, Path]) -> Path:
    """A backend folder holding the Python backend with this interpreter's stub (links, not copies)."""
    python = workspace / "backends" / "python"
    python.mkdir(parents=True)
    for item in dist["backend"].iterdir():
        if item.name != "__pycache__":
            (python / item.name).symlink_to(item)
    (python / "triton_python_backend_stub").symlink_to(dist["stub"])
    return python.parent


#: how long tritonserver waits after SIGTERM for clients to close keep-alive connections; the
#: drain before it (TritonServer.drain) has already answered what was in flight
SERVER_EXIT_TIMEOUT_S = 3


def tritonserver_args(
    dist: dict[str, Path], repo: Path, backends: Path, model: str, host: str, ports: dict[str, int], shm: str
) -> list[str]:
    return [
        str(dist["binary"]),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        f"--load-model={model}",
        "--http-address=127.0.0.1",
        f"--http-port={ports['http']}",
        f"--grpc-address={host}",
        f"--grpc-port={ports['grpc']}",
        "--allow-metrics=true",
        f"--metrics-address={host}",
        f"--metrics-port={ports['metrics']}",
        "--allow-gpu-metrics=false",
        "--allow-cpu-metrics=true",
        "--disable-auto-complete-config",
        "--strict-readiness=true",
        f"--exit-timeout-secs={SERVER_EXIT_TIMEOUT_S}",
        "--pinned-memory-pool-byte-size=0",
        "--log-verbose=0",
        f"--backend-config=python,shm-region-prefix-name={shm}",
        # A stub imports torch/onnxruntime and opens the engine before it answers: give it time.
        "--backend-config=python,stub-timeout-seconds=300",
    ]


def server_env(dist: dict[str, Path]) -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(dist["libs"]), env.get("LD_LIBRARY_PATH")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
    return env


def _die_with_parent(parent: int):
    """For the server's child between fork and exec: SIGTERM when `vimdeploy serve` dies (even by SIGKILL).

    Only tritonserver itself: its backend stubs are its children and do not inherit this.
    They stay in the process group made here, which the watchdog (watchdog.py) kills.
    """
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl  # found here, not in the child

    def setup():  # pragma: no cover - runs in the child
        os.setsid()  # its own process group: a terminal's Ctrl-C reaches only us; we forward one SIGTERM
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(1)

    return setup


class TritonServer:
    """One tritonserver process; its output is kept (last lines) and optionally echoed."""

    def __init__(self, args: list[str], env: dict[str, str], url: str, echo=None, api_key: str | None = None):
        self.token = os.urandom(16).hex()
        # explicit model control, its API locked to us: the drain on shutdown unloads the model.
        # Triton takes these header values only on its command line, so local users who can read
        # its command line (ps) can read them; clients over the network cannot.
        locks = [(ADMIN_APIS, ADMIN_HEADER, self.token)]
        if api_key is not None:
            locks.append((API_KEY_APIS, API_KEY_HEADER, api_key))
        self.args = [*args, "--model-control-mode=explicit"]
        for apis, header, value in locks:
            self.args += [
                f"--http-restricted-api={','.join(apis)}:{header}={value}",
                f"--grpc-restricted-protocol={','.join(apis)}:{header}={value}",
            ]
        self.env, self.url, self.echo = env, url, echo
        self.process: subprocess.Popen | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=60)
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        self._reader = threading.Thread(target=self._read, name="tritonserver-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            if self.echo is not None:
                self.echo(line)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _call(self, path: str, body: dict | None = None, timeout: float = 5.0):
        request = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={ADMIN_HEADER: self.token},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
            return response.status, json.loads(data) if data else None

    def ready(self) -> bool:
        try:
            return self._call("/v2/health/ready", timeout=2)[0] == 200
        except (urllib.error.URLError, OSError):
            return False

    def drain(self, model: str, timeout_s: float) -> bool:
        """Unload `model`: Triton rejects new requests to it and answers those in flight.

        True once it is unloaded, False after timeout_s. A plain SIGTERM is no drain: Triton
        first waits for clients to close their keep-alive connections, serving them meanwhile,
        and cuts whatever is in flight when its exit timeout runs out (measured with 2.51).
        """
        deadline = time.monotonic() + timeout_s
        try:
            self._call(f"/v2/repository/models/{model}/unload", {})
            while time.monotonic() < deadline and self.alive():
                _, index = self._call("/v2/repository/index", {})
                if not any(m.get("name") == model and m.get("state") in ("READY", "UNLOADING") for m in index or []):
                    return True
                time.sleep(0.1)
        except (urllib.error.URLError, OSError, ValueError):
            pass
        return False

    def wait_ready(self, timeout_s: float, stop: threading.Event) -> bool:
        """True once ready; False if `stop` was set first. Raises if the server dies or times out."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            if not self.alive():
                raise VimdeployError(
                    f"tritonserver exited during startup (status {self.process.returncode}):\n" + self.log_tail()
                )
            if self.ready():
                return True
            if time.monotonic() > deadline:
                raise VimdeployError(f"tritonserver was not ready after {timeout_s:.0f} s:\n" + self.log_tail())
            stop.wait(0.25)
        return False

    def stop(self, grace_s: float) -> int:
        """SIGTERM, SIGKILL after grace_s. Drain first: SIGTERM alone does not end in-flight requests well."""
        if self.process is None:
            return 0
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # A backend stub whose server died uncleanly lives on (measured: for the rest of the
        # session, after Triton crashed at its exit timeout). The stubs stay in the server's
        # process group, which _die_with_parent made for it alone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(5)
        return self.process.returncode

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(list(self.tail)[-lines:])
