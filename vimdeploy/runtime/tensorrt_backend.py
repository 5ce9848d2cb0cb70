"""TensorRT backend: a `.plan` / `.engine` from `vimdeploy build`, run with TensorRT's Python API.

As TensorRT's own samples now do (samples/python/common_runtime.py), buffers and streams
come from cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` on older cuda-python),
not pycuda. Inference is `execute_async_v3` after `set_input_shape` / `set_tensor_address`.

* numpy in -> numpy out: the batch is copied into device buffers this engine owns (sized
  for the profile's largest batch), run, copied back. With `cuda_graph=True` each input
  shape is captured once (cudaStreamBeginCapture/EndCapture) and replayed with
  cudaGraphLaunch: the buffers never move, so the captured addresses stay valid.
* torch in -> torch out: CUDA tensors are bound by `data_ptr()` and run on torch's current
  stream, no copies (CPU tensors are moved to the GPU first). No graphs here: the
  addresses change from call to call.
* A batch above the profile's max is run in chunks of max; one below its min is padded
  with zeros and cut back (`Engine.run`; Vim treats every image on its own, so both are exact).

At load, the sidecar (`model.plan.json`) is checked against this machine: TensorRT
version, compute capability and plugin library; a mismatch is a clear error instead of
TensorRT's deserialization message (`vimdeploy.tensorrt.sidecar.check_sidecar`, a pure
function tested without TensorRT). `check=False` skips it.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, InputError
from ..fileio import file_sha256
from ..tensorrt.imports import cuda_call, import_cudart, import_tensorrt
from ..tensorrt.plugin import find_plugin, load_plugin
from ..tensorrt.sidecar import check_sidecar, current_machine, read_sidecar, sidecar_path
from .base import Engine


class TensorRTEngine(Engine):
    takes_tensors = True

    def __init__(
        self,
        path,
        plugin=None,
        cuda_graph: bool = False,
        check: bool = True,
        device: str = "auto",
        gpu: int = 0,
        verbose: bool = False,
        **_ignored,
    ):
        """`device`: "auto" or "cuda" (a TensorRT engine runs on an NVIDIA GPU only); `gpu`: its index."""
        self.path = Path(path)
        if device == "cpu":
            raise ArtifactError(f"--device cpu: {self.path.name} is a TensorRT engine, which runs on NVIDIA GPUs only")
        trt = self.trt = import_tensorrt()
        cudart = self.cudart = import_cudart()
        cuda_call(cudart.cudaSetDevice(gpu))
        self.gpu = gpu
        self.sidecar = read_sidecar(self.path) or {}
        if not self.sidecar:
            warnings.warn(
                f"{sidecar_path(self.path).name} not found: cannot check that {self.path.name} fits this "
                "machine (TensorRT version, GPU) before loading it.",
                stacklevel=2,
            )

        # The plugin must be registered before deserializing. The library: explicit, else the
        # one the engine was built with (if it is still there), else the built one.
        recorded = self.sidecar.get("plugin")  # None: built without plugin nodes (or no sidecar)
        self.plugin_path = None
        if plugin or recorded or not self.sidecar:
            candidate = plugin or (recorded["path"] if recorded and Path(recorded["path"]).is_file() else None)
            try:
                self.plugin_path = find_plugin(candidate)
                load_plugin(self.plugin_path)
            except ArtifactError:
                if plugin or recorded:
                    raise  # without a sidecar, try the engine as a plugin-free one

        if check and self.sidecar:
            current = current_machine(trt.__version__, gpu)
            errors, warns = check_sidecar(
                self.sidecar, current, file_sha256(self.plugin_path) if self.plugin_path else None
            )
            for w in warns:
                warnings.warn(w, stacklevel=2)
            if errors:
                raise ArtifactError(f"{self.path.name} does not fit this machine:\n  " + "\n  ".join(errors))

        self.logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ArtifactError(
                f"TensorRT could not deserialize {self.path} (built by another TensorRT version, "
                "for another GPU, or its plugin library not loaded; see the messages above)."
            )
        self.context = self.engine.create_execution_context()

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if len(self.inputs) != 1 or "logits" not in self.outputs:
            raise ArtifactError(
                f"{self.path.name}: expected one input and a `logits` output; "
                f"has inputs {self.inputs}, outputs {self.outputs}."
            )
        self.input_name = self.inputs[0]
        self.min_shape, self.opt_shape, self.max_shape = (
            tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0)
        )
        self.input_hw = tuple(self.max_shape[2:]) if self.min_shape[2:] == self.max_shape[2:] else None
        self.input_size = self.input_hw[0] if self.input_hw and self.input_hw[0] == self.input_hw[1] else None
        if self.input_size:
            self.default_input_size = self.input_size
        self.num_classes = int(self.engine.get_tensor_shape("logits")[-1])
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}

        self.batch_range = (self.min_shape[0], self.max_shape[0])
        self.stream = cuda_call(cudart.cudaStreamCreate())
        self.cuda_graph = cuda_graph
        self.graphs: dict[tuple, object] = {}
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    # ---------------------------------------------------------------------------- helpers

    def _set_shape(self, shape) -> dict[str, tuple]:
        if not self.context.set_input_shape(self.input_name, tuple(shape)):
            raise InputError(
                f"{self.path.name} does not accept input shape {tuple(shape)} "
                f"(profile min {self.min_shape}, max {self.max_shape})."
            )
        return {n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                cuda_call(self.cudart.cudaFree(ptr))
            self.graphs.clear()  # captured graphs point at the old buffer
            ptr = cuda_call(self.cudart.cudaMalloc(nbytes))
            self.buffers[name] = (ptr, nbytes)
        return int(ptr)

    def _execute(self, stream) -> None:
        if not self.context.execute_async_v3(int(stream)):
            raise ArtifactError(f"TensorRT failed to run {self.path.name} (execute_async_v3 returned false).")

    def _launch(self, key) -> None:
        """execute_async_v3, or replay of the CUDA graph captured for this input shape."""
        cudart = self.cudart
        if not self.cuda_graph:
            return self._execute(self.stream)
        graph_exec = self.graphs.get(key)
        if graph_exec is None:
            # One plain run first: a shape change makes TensorRT do work that must not be captured.
            self._execute(self.stream)
            cuda_call(cudart.cudaStreamSynchronize(self.stream))
            cuda_call(
                cudart.cudaStreamBeginCapture(self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)
            )
            try:
                self._execute(self.stream)
            finally:
                graph = cuda_call(cudart.cudaStreamEndCapture(self.stream))
            graph_exec = self.graphs[key] = cuda_call(cudart.cudaGraphInstantiate(graph, 0))
            cuda_call(cudart.cudaGraphDestroy(graph))
            # the plain run already produced this shape's outputs; replaying once more is harmless
        cuda_call(cudart.cudaGraphLaunch(graph_exec, self.stream))

    # ---------------------------------------------------------------------------- run

    def _infer(self, images, names: list[str]) -> dict:
        if type(images).__module__.startswith("torch"):
            return self._infer_torch(images, names)
        cudart, h2d, d2h = self.cudart, *self._copy_kinds()
        chunk = np.ascontiguousarray(images.astype(self.dtypes[self.input_name], copy=False))
        shapes = self._set_shape(chunk.shape)
        max_shapes = {n: (self.max_shape[0], *shapes[n][1:]) for n in self.outputs}
        inp = self._buffer(self.input_name, int(np.prod(self.max_shape)) * chunk.itemsize)
        self.context.set_tensor_address(self.input_name, inp)
        host = {}
        for n in self.outputs:  # every output needs an address, wanted or not
            ptr = self._buffer(n, int(np.prod(max_shapes[n])) * self.dtypes[n].itemsize)
            self.context.set_tensor_address(n, ptr)
            host[n] = np.empty(shapes[n], self.dtypes[n])
        cuda_call(cudart.cudaMemcpyAsync(inp, chunk.ctypes.data, chunk.nbytes, h2d, self.stream))
        self._launch(chunk.shape)
        for n in names:
            cuda_call(cudart.cudaMemcpyAsync(host[n].ctypes.data, self.buffers[n][0], host[n].nbytes, d2h, self.stream))
        cuda_call(cudart.cudaStreamSynchronize(self.stream))
        return {n: host[n].astype(np.float32) for n in names}

    def _copy_kinds(self):
        kind = self.cudart.cudaMemcpyKind
        return kind.cudaMemcpyHostToDevice, kind.cudaMemcpyDeviceToHost

    def _infer_torch(self, images, names: list[str]) -> dict:
        """torch in/out: CUDA tensors are bound by data_ptr, on torch's current stream."""
        import torch

        dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}
        device = images.device if images.is_cuda else torch.device("cuda", torch.cuda.current_device())
        x = images.to(device=device, dtype=dtype[self.dtypes[self.input_name]]).contiguous()
        stream = torch.cuda.current_stream(device).cuda_stream
        shapes = self._set_shape(x.shape)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outs = {n: torch.empty(shapes[n], dtype=dtype[self.dtypes[n]], device=device) for n in self.outputs}
        for n, out in outs.items():
            self.context.set_tensor_address(n, out.data_ptr())
        self._execute(stream)
        # Outputs are on the stream's timeline: the caller's later torch work is ordered after.
        return {n: outs[n].float() for n in names}

    def describe(self) -> dict:
        s = self.sidecar
        return {
            "backend": "tensorrt",
            "device": f"cuda:{self.gpu}",
            "path": str(self.path),
            "tensorrt": self.trt.__version__,
            "precision": s.get("precision"),
            "built_on": s.get("gpu"),
            "profile": {"min": list(self.min_shape), "opt": list(self.opt_shape), "max": list(self.max_shape)},
            "plugin": str(self.plugin_path) if self.plugin_path else None,
            "cuda_graph": self.cuda_graph,
        }

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        for g in self.graphs.values():
            self.cudart.cudaGraphExecDestroy(g)
        self.buffers, self.graphs = {}, {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: best effort, as TensorRT's samples do
            pass


if __name__ == "__main__":  # pragma: no cover - `python -m vimdeploy.runtime.tensorrt_backend model.plan`
    print(json.dumps(TensorRTEngine(sys.argv[1]).describe(), indent=2))
