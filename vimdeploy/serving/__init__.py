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
import re
import shutil
import signal
import threading
from pathlib import Path

from ..data import MAX_IMAGE_PIXELS
from ..errors import InputError, VimdeployError
from ..triton import write_model
from .gate import Gate
from .handler import ModelSpec, probe
from .process import free_ports
from .server import (
    API_KEY_HEADER,
    GRPC_API_KEY_HEADER,
    SERVER_EXIT_TIMEOUT_S,
    TritonServer,
    prepare_backends,
    server_env,
    triton_distribution,
    tritonserver_args,
)
from .watchdog import Watchdog, make_workspace, remove_shm, shm_prefix, sweep

__all__ = [
    "serve",
    "api_key_from_env",
    "ModelSpec",
    "API_KEY_HEADER",
    "GRPC_API_KEY_HEADER",
    "MAX_IMAGE_PIXELS",
    "MAX_REQUEST_BYTES",
]

#: the largest HTTP request body accepted: 8 Vim-Ti images (8 x 3 x 224 x 224 floats) are about
#: 24 MB as JSON and 4.8 MB in Triton's binary format; 64 MiB leaves room for larger images or batches
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def _check_options(name, ports, max_batch, queue_delay_us, instances, max_image_pixels, max_request_bytes, api_key):
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
    if max_image_pixels < 1:
        raise InputError(f"--max-image-pixels must be at least 1; got {max_image_pixels}.")
    if max_request_bytes < 1024:
        raise InputError(f"--max-request-bytes must be at least 1024; got {max_request_bytes}.")
    if api_key is not None and not re.fullmatch(r"[A-Za-z0-9._~+/-]{16,}", api_key):
        raise InputError(
            "the API key must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / - "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)."
        )


def api_key_from_env(variable: str) -> str:
    """The API key from environment variable `variable`: a key on the command line would be in `ps`."""
    key = os.environ.get(variable, "")
    if not key:
        raise InputError(f"--api-key-env {variable}: the environment variable {variable} is not set or empty.")
    return key


def serve(
    artifact: str | Path,
    name: str = "vim",
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    max_batch: int = 8,
    queue_delay_us: int = 100,
    instances: int = 1,
    features: bool = False,
    labels: str | Path | None = None,
    ema: bool = False,
    allow_nonfinite: bool = False,
    exit_timeout_s: int = 30,
    startup_timeout_s: float = 300.0,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    api_key: str | None = None,
    on_ready=None,
    echo=None,
    input_size=None,
    output_name: str | None = None,
    preprocessing_options: dict | None = None,
    device: str = "auto",
) -> dict:
    """Serve `artifact` until SIGINT or SIGTERM; then answer what is in flight and stop.

    Images in `image_bytes` over max_image_pixels and HTTP bodies over max_request_bytes are
    refused; with api_key, inference and model information need the header `API_KEY_HEADER`.
    on_ready(info) is called once the model is ready; echo(line), if given, gets every line
    the server logs. Returns a summary of the run. Must run in the main thread (signals).

    Any ONNX or engine, also one made elsewhere: the preprocessing of `image_bytes` and the class
    names are the artifact's (vimdeploy/preprocessing.py); `preprocessing_options` (mean, std,
    resize_size, interpolation), `labels`, `input_size` and `output_name` supply or replace them.
    """
    from ..data import artifact_recipe
    from ..preprocessing import parse_size
    from ..runtime import open_engine

    ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    _check_options(name, ports, max_batch, queue_delay_us, instances, max_image_pixels, max_request_bytes, api_key)
    dist = triton_distribution()
    artifact = Path(artifact).resolve()
    engine_options = {name: True for name, on in {"ema": ema, "allow_nonfinite": allow_nonfinite}.items() if on}
    if output_name is not None:
        if artifact.suffix.lower() not in (".onnx",):
            raise InputError("--output-name is for an ONNX; an engine or a checkpoint names its class scores `logits`.")
        engine_options["logits_output"] = output_name
    size = parse_size(input_size, "--input-size")
    if size is not None and size[0] != size[1]:
        raise InputError(f"serve takes square inputs; got --input-size {input_size}.")
    engine_options["device"] = device  # every instance's engine, as the probe's
    # Open the artifact here once: a bad file is one clear error, not a model failing to load
    # inside the server; and the probe tells the config its shapes.
    engine = open_engine(artifact, **engine_options)
    spec = probe(engine, features=features, size=size[0] if size else None)
    description = engine.describe()
    del engine
    recipe, names = artifact_recipe(
        artifact, spec.img_size, spec.num_classes, labels=labels, **(preprocessing_options or {})
    )
    settings = {
        "artifact": str(artifact),
        "engine_options": engine_options,
        "spec": spec.to_dict(),
        "label_names": names,
        "preprocessing": recipe.to_json(),
        "max_image_pixels": int(max_image_pixels),
    }

    sweep()  # what killed servers left: their processes, shared memory, workspaces
    workspace = make_workspace()
    shm = shm_prefix()
    watchdog = Watchdog(workspace, shm)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    server = gate = None
    try:
        write_model(workspace / "models", name, spec, settings, max_batch, queue_delay_us, instances)
        backends = prepare_backends(workspace, dist)
        probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        # Triton's own HTTP on a loopback port; the public one is the gate's (gate.py: body limit)
        triton_http = free_ports(1)[0]
        args = tritonserver_args(dist, workspace / "models", backends, name, host, {**ports, "http": triton_http}, shm)
        server = TritonServer(args, server_env(dist), f"http://127.0.0.1:{triton_http}", echo, api_key)
        server.start()  # before the gate's thread: the fork runs Python code (preexec_fn) in the child
        watchdog.guard(server.process.pid)
        gate = Gate(host, http_port, triton_http, max_request_bytes)
        try:
            gate.start()
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{http_port} (--http-port): {e.strerror or e}") from None
        ready = server.wait_ready(startup_timeout_s, stop)
        info = {
            "model": name,
            "artifact": str(artifact),
            "engine": description,
            "spec": spec.to_dict(),
            "preprocessing": recipe.to_dict(),
            "http": f"http://{probe_host}:{http_port}",
            "grpc": f"{probe_host}:{grpc_port}",
            "metrics": f"http://{probe_host}:{metrics_port}/metrics",
            "max_batch": max_batch,
            "max_queue_delay_us": queue_delay_us,
            "instances": instances,
            "max_image_pixels": max_image_pixels,
            "max_request_bytes": max_request_bytes,
            "api_key": api_key is not None,
            "pid": os.getpid(),
        }
        if ready and on_ready is not None:
            on_ready(info)
        while ready and not stop.wait(0.5):
            if not server.alive():
                raise VimdeployError(
                    f"tritonserver exited unexpectedly (status {server.process.returncode}):\n" + server.log_tail()
                )
        drained = ready and server.drain(name, exit_timeout_s)
        code = server.stop(SERVER_EXIT_TIMEOUT_S + 15)
        server = None
        return {**info, "stopped_by": "signal", "drained": drained, "server_exit_code": code}
    finally:
        if server is not None:
            server.stop(SERVER_EXIT_TIMEOUT_S + 15)
        if gate is not None:
            gate.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(workspace, ignore_errors=True)
        remove_shm(shm)
        watchdog.release()
