"""`vimdeploy serve`: any vimdeploy artifact behind Triton Inference Server.

The artifact (checkpoint, .onnx, .plan) is opened with `vimdeploy.runtime.open_engine`
inside Triton's Python backend (backend.py), one engine per instance, with Triton's dynamic
batcher in front and its KServe v2 HTTP/gRPC endpoints, health, readiness and Prometheus
metrics. The server binary is the one in the nvidia-pytriton wheel (server.py).

    images       FP32   N x 3 x S x S, normalised      } exactly one per request
    image_bytes  BYTES  N x 1, encoded JPEG/PNG         } (preprocessed like `predict`)
    ->  logits (N x C), top5_indices, top5_labels, top5_scores (N x min(5, C)), [features]
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from ..errors import InputError, VimdeployError
from .handler import ModelSpec, probe
from .repository import write_model
from .server import (SERVER_EXIT_TIMEOUT_S, TritonServer, prepare_backends, remove_shm, server_env, shm_prefix,
                     triton_distribution, tritonserver_args)

__all__ = ["serve", "ModelSpec"]


def _check_options(name, ports, max_batch, queue_delay_us, instances):
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"--name must be a plain model name; got {name!r}.")
    for option, port in ports.items():
        if not 1 <= port <= 65535:
            raise InputError(f"--{option}-port must be between 1 and 65535; got {port}.")
    if len(set(ports.values())) != len(ports):
        raise InputError(f"the HTTP, gRPC and metrics ports must differ; got {ports}.")
    if max_batch < 1:
        raise InputError(f"--max-batch must be at least 1; got {max_batch}.")
    if queue_delay_us < 0:
        raise InputError(f"--max-queue-delay-us must be >= 0; got {queue_delay_us}.")
    if instances < 1:
        raise InputError(f"--instances must be at least 1; got {instances}.")


def serve(artifact: str | Path, name: str = "vim", host: str = "127.0.0.1", http_port: int = 8000,
          grpc_port: int = 8001, metrics_port: int = 8002, max_batch: int = 8, queue_delay_us: int = 100,
          instances: int = 1, features: bool = False, labels: str | Path | None = None, ema: bool = False,
          allow_nonfinite: bool = False, exit_timeout_s: int = 30, startup_timeout_s: float = 300.0, on_ready=None, echo=None) -> dict:
    """Serve `artifact` until SIGINT or SIGTERM; then answer what is in flight and stop.

    on_ready(info) is called once the model is ready; echo(line), if given, gets every line
    the server logs. Returns a summary of the run. Must run in the main thread (signals).
    """
    from ..data import class_names
    from ..runtime import open_engine

    ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    _check_options(name, ports, max_batch, queue_delay_us, instances)
    dist = triton_distribution()
    artifact = Path(artifact).resolve()
    engine_options = {name: True for name, on in {"ema": ema, "allow_nonfinite": allow_nonfinite}.items() if on}
    # Open the artifact here once: a bad file is one clear error, not a model failing to load
    # inside the server; and the probe tells the config its shapes.
    engine = open_engine(artifact, **engine_options)
    spec = probe(engine, features=features)
    description = engine.describe()
    del engine
    labels = str(Path(labels).resolve()) if labels is not None else None
    class_names(spec.num_classes, labels)  # a labels file of the wrong length fails here
    settings = {"artifact": str(artifact), "engine_options": engine_options, "spec": spec.to_dict(),
                "labels": labels}

    workspace = Path(tempfile.mkdtemp(prefix="vimdeploy-serve-"))
    shm = shm_prefix()
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        write_model(workspace / "models", name, spec, settings, max_batch, queue_delay_us, instances)
        backends = prepare_backends(workspace, dist)
        probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        args = tritonserver_args(dist, workspace / "models", backends, name, host, ports, shm)
        server = TritonServer(args, server_env(dist), f"http://{probe_host}:{http_port}", echo)
        server.start()
        ready = server.wait_ready(startup_timeout_s, stop)
        info = {"model": name, "artifact": str(artifact), "engine": description, "spec": spec.to_dict(),
                "http": f"http://{probe_host}:{http_port}", "grpc": f"{probe_host}:{grpc_port}",
                "metrics": f"http://{probe_host}:{metrics_port}/metrics", "max_batch": max_batch,
                "max_queue_delay_us": queue_delay_us, "instances": instances, "pid": os.getpid()}
        if ready and on_ready is not None:
            on_ready(info)
        while ready and not stop.wait(0.5):
            if not server.alive():
                raise VimdeployError(f"tritonserver exited unexpectedly (status {server.process.returncode}):\n"
                                     + server.log_tail())
        drained = ready and server.drain(name, exit_timeout_s)
        code = server.stop(SERVER_EXIT_TIMEOUT_S + 15)
        server = None
        return {**info, "stopped_by": "signal", "drained": drained, "server_exit_code": code}
    finally:
        if server is not None:
            server.stop(SERVER_EXIT_TIMEOUT_S + 15)
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(workspace, ignore_errors=True)
        remove_shm(shm)

