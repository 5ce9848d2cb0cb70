"""`vimdeploy build`: a vimdeploy ONNX -> a TensorRT engine (`.plan`) + a JSON sidecar.

Small steps, each a plain function over TensorRT's own Python API, composed by
`build_engine` as Polygraphy composes its loaders (network_from_onnx_path -> CreateConfig ->
engine_from_network): `create_logger`, `network_from_onnx`, `create_config`, `add_profile`,
`apply_timing_cache`, `build_serialized`, `save_timing_cache`. Polygraphy itself is not a
dependency (it stays a debugging tool: `polygraphy run model.onnx --trt --plugins
libvimdeploy_trt_plugin.so`, in the `tensorrt` extra). mypy checks every TensorRT call here
against `tensorrt-stubs` (tests/test_typecheck.py).

Precision (TensorRT 11 is strongly typed: no FP16/INT8 builder flags, no calibrators; on
10.12+ we ask for the same with NetworkDefinitionCreationFlag.STRONGLY_TYPED): every layer
runs in the type the ONNX gives it. So precision is a property of the ONNX, written by
`vimdeploy export --precision` / `vimdeploy convert` and recorded in its metadata
(`vimdeploy.precision`). `build --fp16/--int8`:
  * ONNX is fp32       -> run that same precision pass first (into a temporary ONNX);
  * ONNX already is it -> build it as it is;
  * any other mismatch -> refuse (we never convert fp16 -> int8 or back).
Without a flag the engine has the ONNX's precision.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..contract import OP_TYPE
from ..errors import ArtifactError, InputError, VimdeployError
from ..fileio import atomic_path, check_target, file_sha256, load_onnx
from .imports import LazyModule, import_cudart, import_tensorrt
from .plugin import find_plugin, load_plugin, plugin_record
from .profiles import check_profile_grid, parse_size_range
from .sidecar import SIDECAR_FORMAT, current_machine, description_entries, sidecar_path, write_engine

if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = LazyModule(import_tensorrt)

__all__ = [
    "build_engine",
    "parse_range",
    "resolve_precision",
    "make_profile",
    "onnx_summary",
    "create_logger",
    "network_from_onnx",
    "create_config",
    "add_profile",
    "apply_timing_cache",
    "build_serialized",
    "save_timing_cache",
]


# --------------------------------------------------------------------------------------------
# Pure helpers (tested without TensorRT)


def parse_range(text: str | None, what: str = "--batch") -> tuple[int, int, int] | None:
    """ "1:8:32" -> (1, 8, 32); "8" -> (8, 8, 8); None -> None. min <= opt <= max, all >= 1."""
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(":")]
    except ValueError:
        raise InputError(f"{what} takes MIN:OPT:MAX or N (integers); got {text!r}.") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not (1 <= values[0] <= values[1] <= values[2]):
        raise InputError(f"{what} takes MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX; got {text!r}.")
    return values[0], values[1], values[2]


def resolve_precision(onnx_precision: str, requested: str | None) -> str | None:
    """What to do with an ONNX of `onnx_precision` when `requested` is asked for.

    Returns None (build the ONNX as it is) or the precision to convert the fp32 ONNX to.
    """
    if requested is None or requested == onnx_precision:
        return None
    if onnx_precision == "fp32":
        return requested
    raise InputError(
        f"the ONNX is already {onnx_precision} but --{requested} was asked for. TensorRT is strongly typed: the "
        f"engine's precision is the ONNX's. Build from the fp32 export (vimdeploy build model_fp32.onnx "
        f"--{requested} ...) or drop --{requested}."
    )


def make_profile(input_shape, batch: tuple | None, size: tuple | None) -> dict[str, list[int]]:
    """min/opt/max NCHW shapes for an ONNX input shape such as [None, 3, 224, 224].

    Dimensions given as None (symbolic) take the ranges; fixed ones must agree with them.
    `size`: one (min, opt, max) for both sides, or (heights, widths) from `parse_size_range`.
    """
    size_h, size_w = size if size is not None and isinstance(size[0], tuple) else (size, size)
    n, c, h, w = input_shape
    if not isinstance(c, int):
        raise ArtifactError(f"the ONNX input has a symbolic channel dimension ({c}); expected 3.")
    if isinstance(n, int):
        if batch and batch != (n, n, n):
            raise InputError(
                f"this ONNX has a fixed batch of {n}; --batch {':'.join(map(str, batch))} cannot apply "
                "(export with --batch dynamic for a batch range)."
            )
        batch = (n, n, n)
    elif batch is None:
        batch = (1, 8, 32)
    if isinstance(h, int) and isinstance(w, int):
        if size and (size_h, size_w) != ((h, h, h), (w, w, w)):
            raise InputError(f"this ONNX has a fixed {h}x{w} input; --img-size cannot change it (re-export instead).")
        hs, ws = (h, h, h), (w, w, w)
    else:
        if size is None:
            raise InputError(
                "this ONNX has a dynamic resolution: pass --img-size MIN:OPT:MAX (e.g. 224:384:1248, "
                "or per side 224x224:384x640:1248x1248)."
            )
        hs = (h,) * 3 if isinstance(h, int) else size_h
        ws = (w,) * 3 if isinstance(w, int) else size_w
    return {k: [batch[i], c, hs[i], ws[i]] for i, k in enumerate(("min", "opt", "max"))}


def onnx_summary(path: str | Path) -> dict:
    """Input name/shape, precision metadata and plugin nodes of an ONNX (structure only)."""
    import onnx

    proto = load_onnx(path, load_external_data=False)
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1:
        raise ArtifactError(f"{path}: expected one input (images), found {len(inputs)}.")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ArtifactError(f"{path}: the input must be NCHW; its shape is {dims}.")
    meta = {p.key: p.value for p in proto.metadata_props}
    dtype_names = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16"}
    io = {
        v.name: {
            "dtype": dtype_names.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
            "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim],
        }
        for v in [inputs[0], *proto.graph.output]
    }
    plugin_versions = sorted(
        {
            next((a.s.decode() for a in n.attribute if a.name == "plugin_version"), "1")
            for n in proto.graph.node
            if n.op_type == OP_TYPE
        }
    )
    return {
        "input": inputs[0].name,
        "shape": dims,
        "precision": meta.get("vimdeploy.precision", "fp32"),
        "outputs": [o.name for o in proto.graph.output],
        "io": io,
        "plugin_versions": plugin_versions,
        "metadata": {k[len("vimdeploy.") :]: v for k, v in meta.items() if k.startswith("vimdeploy.")},
    }


# --------------------------------------------------------------------------------------------
# The steps


def create_logger(verbose: bool = False) -> trt.ILogger:
    """A trt.ILogger that prints warnings (everything with verbose) and keeps errors, so that a
    failed parse or build can say why (`logger.errors`)."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if level <= int(trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING):
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return Logger()


def _errors(logger: trt.ILogger) -> list[str]:
    return list(getattr(logger, "errors", []))


def network_flags() -> int:
    # TensorRT 10.12+: ask for strongly typed by name (TensorRT 11 renumbered the enum and
    # ignores the flag, being always strongly typed). Not a hard-coded bit.
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def network_from_onnx(
    builder: trt.Builder, onnx_path: Path, logger: trt.ILogger
) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """A strongly typed network parsed from an ONNX file (the parser must outlive the network)."""
    network = builder.create_network(network_flags())
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so that external-data ONNX files find their weights.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ArtifactError(
            f"TensorRT's ONNX parser rejected {onnx_path.name}:\n  " + "\n  ".join(errors or _errors(logger))
        )
    return network, parser


def _progress_monitor() -> trt.IProgressMonitor:
    """A trt.IProgressMonitor drawing one tqdm bar per build phase (nested phases indent)."""
    from tqdm import tqdm

    class TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = len(self.bars)
            self.bars[phase_name] = tqdm(
                total=num_steps,
                desc="  " * depth + phase_name,
                position=depth,
                leave=False,
                file=sys.stderr,
                unit="step",
            )

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would ask TensorRT to cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return TqdmProgressMonitor()


def create_config(
    builder: trt.Builder,
    workspace_mb: int | None = None,
    opt_level: int | None = None,
    tf32: bool = False,
    progress: bool = False,
) -> trt.IBuilderConfig:
    """An IBuilderConfig: workspace limit, optimization level, TF32, progress bars."""
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)
    # TF32 changes fp32 matmul results by ~1e-3 relative; off unless asked (validate's fp32
    # tolerance is 1e-4). The flag exists on 10.x and 11.x; guard anyway.
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if progress and hasattr(config, "progress_monitor"):
        config.progress_monitor = _progress_monitor()
    return config


def add_profile(
    builder: trt.Builder, config: trt.IBuilderConfig, input_name: str, profile: dict[str, list[int]]
) -> None:
    """One optimization profile: the input's min/opt/max shapes (from `make_profile`)."""
    opt = builder.create_optimization_profile()
    opt.set_shape(input_name, trt.Dims(profile["min"]), trt.Dims(profile["opt"]), trt.Dims(profile["max"]))
    config.add_optimization_profile(opt)


def apply_timing_cache(
    config: trt.IBuilderConfig, path: str | Path | None, warn: Callable[[str], None] = print
) -> bool:
    """Read a timing cache file into the config (an empty cache if the file is missing).

    A cache from another GPU or TensorRT version is ignored, not fatal (ignore_mismatch,
    as NVIDIA's samples and Polygraphy do); if TensorRT refuses it outright the build goes on
    without. Returns whether a cache is set.
    """
    if not path:
        return False
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None and data:
        warn(f"warning: {path} is not a timing cache TensorRT can read; building with a new one.")
        cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=True):
        warn(f"warning: TensorRT did not take the timing cache {path}; building without one.")
        return False
    return True


def save_timing_cache(config: trt.IBuilderConfig, path: str | Path | None, warn: Callable[[str], None] = print) -> bool:
    """Write what this build learned back to the cache file (TensorRT's samples/python/common.py
    save_timing_cache). Never raises: the engine is worth more than its cache."""
    if not path:
        return False
    try:
        cache = config.get_timing_cache()
        if cache is None:
            warn(f"warning: no timing cache to save to {path} (TensorRT did not keep one).")
            return False
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(memoryview(cache.serialize()))
        return True
    except Exception as e:  # noqa: BLE001 - any failure here must not lose the built engine
        warn(f"warning: could not save the timing cache {path}: {type(e).__name__}: {e}")
        return False


def build_serialized(
    builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, logger: trt.ILogger
) -> bytes:
    """build_serialized_network, or a VimdeployError with TensorRT's own error messages."""
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VimdeployError(
            "TensorRT failed to build the engine:\n  " + "\n  ".join(_errors(logger) or ["(no error logged)"])
        )
    return bytes(memoryview(serialized))


# --------------------------------------------------------------------------------------------
# The build


def build_engine(
    onnx_path,
    output,
    *,
    precision: str | None = None,
    convert_options: dict | None = None,
    plugin: str | Path | None = None,
    batch: str | None = None,
    img_size: str | None = None,
    timing_cache: str | Path | None = None,
    workspace_mb: int | None = None,
    opt_level: int | None = None,
    tf32: bool = False,
    force: bool = False,
    progress: bool = True,
    verbose: bool = False,
    echo=None,
) -> dict:
    """Build `output` (.plan) and `output`.json from a vimdeploy ONNX. Returns the sidecar."""
    say: Callable[[str], None] = echo or (lambda msg: None)
    onnx_path, output = Path(onnx_path), Path(output)
    batch_range = parse_range(batch, "--batch")
    size_range = parse_size_range(img_size)
    for p in (output, sidecar_path(output)):
        check_target(p, force)
    import_tensorrt()  # before any work: without TensorRT nothing else matters
    import_cudart()

    info = onnx_summary(onnx_path)
    profile = make_profile(info["shape"], batch_range, size_range)
    check_profile_grid(profile, info["metadata"])
    convert_to = resolve_precision(info["precision"], precision)
    plugin_path = None
    if info["plugin_versions"]:
        plugin_path = find_plugin(plugin)
        load_plugin(plugin_path)
        say(f"plugin {plugin_path} loaded")
    elif plugin:
        say(f"note: {onnx_path.name} has no {OP_TYPE} nodes; --plugin is not needed")

    with tempfile.TemporaryDirectory(prefix="vimdeploy-build-") as tmpdir:
        source = onnx_path
        if convert_to:
            try:
                from ..export.precision import convert_precision
            except ImportError as e:
                raise VimdeployError(
                    f"--{convert_to} on an fp32 ONNX needs vimdeploy's precision pass "
                    f"(vimdeploy.export.precision), which cannot be imported: {e}. "
                    f"Convert first with `vimdeploy convert --precision {convert_to}`."
                ) from None
            say(f"converting {onnx_path.name} to {convert_to} (the precision lives in the ONNX)")
            source = Path(tmpdir) / f"model_{convert_to}.onnx"
            convert_precision(onnx_path, source, convert_to, **(convert_options or {}))
            info["io"] = onnx_summary(source)["io"]  # the pass may change I/O types

        logger = create_logger(verbose)
        builder = trt.Builder(logger)
        network, _parser = network_from_onnx(builder, source, logger)
        config = create_config(builder, workspace_mb, opt_level, tf32, progress)
        add_profile(builder, config, info["input"], profile)
        apply_timing_cache(config, timing_cache, warn=lambda m: warnings.warn(m, stacklevel=2))
        say(
            f"building: {network.num_layers} layers, profile min {profile['min']} opt {profile['opt']} "
            f"max {profile['max']}"
        )
        start = time.perf_counter()
        engine_bytes = build_serialized(builder, network, config, logger)
        elapsed = time.perf_counter() - start

    sidecar = {
        "format": SIDECAR_FORMAT,
        "vimdeploy": __version__,
        **current_machine(trt.__version__),
        "precision": convert_to or info["precision"],
        "strongly_typed": True,
        "tf32": bool(tf32),
        "input": info["input"],
        "outputs": info["outputs"],
        "io": info["io"],
        "profiles": [profile],
        "builder": {
            "optimization_level": opt_level,
            "workspace_mb": workspace_mb,
            "timing_cache": str(timing_cache) if timing_cache else None,
            "build_s": round(elapsed, 1),
        },
        "plugin": plugin_record(plugin_path, info["plugin_versions"]),
        "onnx": {
            "path": str(onnx_path),
            "sha256": file_sha256(onnx_path),
            **{
                k: v
                for k, v in info["metadata"].items()
                if k in ("variant", "img_size", "scan", "batch", "checkpoint_sha256")
            },
        },
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        **description_entries(info["metadata"]),
    }
    write_engine(output, engine_bytes, sidecar, force=force)
    # After the engine is safely on disk: a cache that cannot be saved costs a warning only.
    save_timing_cache(config, timing_cache, warn=lambda m: warnings.warn(m, stacklevel=2))
    return {
        "output": str(output),
        "sidecar": str(sidecar_path(output)),
        "size_mb": output.stat().st_size / 1e6,
        **sidecar,
    }
