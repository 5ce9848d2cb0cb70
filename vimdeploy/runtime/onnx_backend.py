"""ONNX backend: a vimdeploy ONNX export run by ONNX Runtime. No PyTorch.

Both flavors: graphs with `trt.plugins::BiSelectiveScan` get vimdeploy's CPU implementation
of it (vimdeploy/export/ort_op.py: the native custom-op library where built, else the Python
op); portable graphs need nothing extra. A fixed-batch export given another batch size is run
in chunks of its batch (`Engine.run`: the last one zero-padded, its padding dropped): Vim
treats every image independently, so this is exact.

Devices: the portable flavor runs on CUDAExecutionProvider where the installed onnxruntime
(onnxruntime-gpu) offers it and a GPU takes it ("auto", "cuda"), else on the CPU. The op of
the plugin flavor exists for the CPU only, so that flavor runs on CPUExecutionProvider (a
TensorRT engine is its GPU path).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..contract import DOMAIN
from ..errors import ArtifactError, VimdeployError
from ..fileio import load_onnx
from .base import Engine

META_PREFIX = "vimdeploy."
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


class OnnxEngine(Engine):
    def __init__(
        self,
        path,
        device: str = "auto",
        threads: int | None = None,
        scan_op: str = "auto",
        logits_output: str | None = None,
        **_ignored,
    ):
        """`scan_op`: the BiSelectiveScan implementation of a plugin-flavor graph, "auto" (the
        native library where built, else the Python op), "library" or "python" (ort_op.py).
        `logits_output`: the output holding class scores in an ONNX made elsewhere."""
        import onnxruntime as ort

        self.path = Path(path)
        # Structure only (no weights) to read metadata and find custom nodes.
        proto = load_onnx(self.path, load_external_data=False)
        self.metadata = {
            p.key[len(META_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)
        }
        self.custom_op = any(n.domain == DOMAIN for n in proto.graph.node)
        providers = self._providers(device, ort.get_available_providers())
        self.op_errors = contextlib.nullcontext  # the op's refusals, raised around session.run
        self.scan_op = self.op_library = None
        source = str(self.path)
        if self.custom_op:
            from ..export import ort_op

            self.scan_op, self.op_library = ort_op.implementation(scan_op)
            options = ort_op.session_options(threads, self.op_library)
            self.op_errors = ort_op.library_errors if self.op_library else ort_op.scan_errors
            if not self.op_library and self.metadata.get("precision", "fp32") != "fp32":
                # fp16 scan nodes: the Python op is fp32-only; wrap them in exact casts (ort_op.py).
                full = load_onnx(self.path)
                if ort_op.with_fp32_scan_nodes(full):
                    source = full.SerializeToString()
        else:
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
        # Measured: with the Python custom op, ORT's spinning worker threads starve PyTorch's
        # (3.5 s vs 100 s for Vim-Ti on 2 cores); without spinning nothing is lost elsewhere.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if self.metadata.get("precision") in ("int8", "fp8"):
            # Q/DQ run as written, i.e. TensorRT's arithmetic emulated in fp32: ORT's fused INT8
            # kernels saturate on x86 CPUs without VNNI (cosine 0.98 instead of 0.9997 on the
            # digits model) and it has no FP8 GEMM (docs/precision.md).
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.session = self._session(ort, source, options, providers, device)
        self.provider = self.session.get_providers()[0]
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        n, _c, h, w = inp.shape
        self.fixed_batch = n if isinstance(n, int) else None
        self.batch_range = (n, n) if self.fixed_batch else None
        self.input_hw = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        self.input_size = h if self.input_hw and h == w else None
        if self.input_size:
            self.default_input_size = self.input_size
        elif self.metadata.get("trained_resolution", "").isdigit():
            self.default_input_size = int(self.metadata["trained_resolution"])
        # A dynamic-resolution export takes any size on its patch grid (checked before ORT sees it).
        meta = self.metadata
        self.grid = (
            (int(meta["patch_size"]), int(meta["stride"]))
            if meta.get("patch_size", "").isdigit() and meta.get("stride", "").isdigit()
            else None
        )
        # An ONNX made elsewhere names its class scores otherwise: `logits_output`, or its only output.
        graph_outputs = [o.name for o in self.session.get_outputs()]
        only = graph_outputs[0] if len(graph_outputs) == 1 else None
        logits = logits_output or ("logits" if "logits" in graph_outputs else only)
        if logits not in graph_outputs:
            raise ArtifactError(
                f"{path} has no `logits` output (outputs: {', '.join(graph_outputs)}): name the one holding "
                "class scores (--output-name)."
            )
        self.graph_names = {"logits": logits}
        self.outputs = ["logits" if n == logits else n for n in graph_outputs if n != "logits" or n == logits]
        self.num_classes = self.session.get_outputs()[graph_outputs.index(logits)].shape[-1]

    def _providers(self, device: str, available: list[str]) -> list[str]:
        """The execution providers to ask for on `device` (runtime/__init__.py's DEVICES)."""
        if device == "cpu" or (device == "auto" and (self.custom_op or CUDA not in available)):
            return [CPU]
        if self.custom_op:
            raise ArtifactError(
                f"--device cuda: {self.path.name} is a plugin-flavor export, whose BiSelectiveScan op ONNX "
                "Runtime runs on the CPU only; use --device cpu, export with --scan onnx (the portable "
                "flavor) for CUDAExecutionProvider, or build a TensorRT engine"
            )
        if CUDA not in available:
            raise ArtifactError(
                f"--device cuda: this onnxruntime has no {CUDA} (it offers {', '.join(available)}); "
                "install onnxruntime-gpu, or use --device cpu"
            )
        return [CUDA, CPU]

    def _session(self, ort, source, options, providers: list[str], device: str):
        """The session on `providers`; on the CPU where "auto" asked for CUDA and it failed. The
        op's refusal of the node (the native library checks its attributes here) is its error."""
        try:
            with self.op_errors():
                session = ort.InferenceSession(source, options, providers=providers)
        except VimdeployError:
            raise
        except Exception as e:  # noqa: BLE001
            if device == "auto" and providers[0] == CUDA:
                return self._session(ort, source, options, [CPU], "cpu")
            raise ArtifactError(f"ONNX Runtime cannot load {self.path}: {str(e).splitlines()[0]}") from None
        if device == "cuda" and session.get_providers()[0] != CUDA:
            raise ArtifactError(
                f"--device cuda: ONNX Runtime could not start {CUDA} for {self.path.name} (no GPU, or its "
                "CUDA libraries missing; see its messages above); use --device cpu"
            )
        return session

    def _infer(self, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        with self.op_errors():
            wanted = [self.graph_names.get(n, n) for n in names]
            return dict(zip(names, self.session.run(wanted, {self.input_name: images})))

    def close(self) -> None:
        self.session = None

    def _scan_op_description(self) -> str:
        if self.scan_op == "library":
            return f"native ONNX Runtime library ({self.op_library})"
        from ..ops.native import cpu_available

        kernel = "the native CPU kernel" if cpu_available() else "the PyTorch scan (the native CPU kernel is not built)"
        return f"Python op (onnxruntime-extensions) on {kernel}"

    def describe(self) -> dict:
        return {
            "backend": "onnxruntime",
            "provider": self.provider,
            "device": "cuda" if self.provider == CUDA else "cpu",
            "path": str(self.path),
            "batch": self.fixed_batch or "dynamic",
            "input_size": list(self.input_hw) if self.input_hw else "dynamic",
            "outputs": self.outputs,
            "custom_op": self.custom_op,
            **({"scan_op": self._scan_op_description()} if self.custom_op else {}),
            **{k: v for k, v in self.metadata.items() if k != "checkpoint_sha256"},
        }
