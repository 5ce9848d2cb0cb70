"""ONNX backend: a vimdeploy ONNX export run by ONNX Runtime on CPU.

Both flavors: graphs with `trt.plugins::BiSelectiveScan` get vimdeploy's CPU implementation
of it (vimdeploy/export/ort_op.py); portable graphs need nothing extra. A fixed-batch
export given another batch size is run in chunks of its batch (`Engine.run`: the last one
zero-padded, its padding dropped): Vim treats every image independently, so this is exact.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..contract import DOMAIN
from ..errors import ArtifactError
from ..fileio import load_onnx
from .base import Engine

META_PREFIX = "vimdeploy."


class OnnxEngine(Engine):
    def __init__(self, path, threads: int | None = None, **_ignored):
        import onnxruntime as ort

        self.path = Path(path)
        # Structure only (no weights) to read metadata and find custom nodes.
        proto = load_onnx(self.path, load_external_data=False)
        self.metadata = {
            p.key[len(META_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)
        }
        self.custom_op = any(n.domain == DOMAIN for n in proto.graph.node)
        self.op_errors = contextlib.nullcontext  # the op's refusals, raised around session.run
        if self.custom_op:
            from ..export.ort_op import scan_errors, session_options

            options, self.op_errors = session_options(threads), scan_errors
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
        source = str(self.path)
        if self.custom_op and self.metadata.get("precision", "fp32") != "fp32":
            # fp16 scan nodes: ORT's op is fp32-only; wrap them in exact casts (ort_op.py).
            from ..export.ort_op import with_fp32_scan_nodes

            full = load_onnx(self.path)
            if with_fp32_scan_nodes(full):
                source = full.SerializeToString()
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None
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
        self.outputs = [o.name for o in self.session.get_outputs()]
        if "logits" not in self.outputs:
            raise ArtifactError(
                f"{path} has no `logits` output (outputs: {', '.join(self.outputs)}); is it a vimdeploy export?"
            )
        self.num_classes = self.session.get_outputs()[self.outputs.index("logits")].shape[-1]

    def _infer(self, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        with self.op_errors():
            return dict(zip(names, self.session.run(names, {self.input_name: images})))

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict:
        return {
            "backend": "onnxruntime",
            "provider": "CPUExecutionProvider",
            "path": str(self.path),
            "batch": self.fixed_batch or "dynamic",
            "input_size": list(self.input_hw) if self.input_hw else "dynamic",
            "outputs": self.outputs,
            "custom_op": self.custom_op,
            **{k: v for k, v in self.metadata.items() if k != "checkpoint_sha256"},
        }
