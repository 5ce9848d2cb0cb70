"""`vimdeploy build`: a vimdeploy ONNX -> a TensorRT engine (`.plan`) + a JSON sidecar.

Written against TensorRT's own Python API, as its samples do (samples/python/common.py,
simple_progress_monitor): OnnxParser -> strongly typed network -> IBuilderConfig
(optimization profile, timing cache, workspace, optimization level, IProgressMonitor) ->
build_serialized_network. Polygraphy's loaders (network_from_onnx_path, CreateConfig,
engine_from_network) would save a few lines but hide the progress monitor, the plugin
loading order and the strongly typed flag behind their own options, and would become a
runtime dependency; they stay a debugging tool (`polygraphy run model.onnx --trt --plugins
libvimdeploy_trt_plugin.so`), listed in the `tensorrt` extra.

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

import ctypes
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

from . import __version__
from .errors import ArtifactError, InputError, VimdeployError
from .fileio import atomic_path, file_sha256

__all__ = ["build_engine", "import_tensorrt", "parse_range", "resolve_precision", "make_profile",
           "load_plugin", "sidecar_path", "environment", "TENSORRT_MISSING"]

MIN_TENSORRT = (10, 0)  # IPluginV3, execute_async_v3 / set_input_shape, strongly typed networks
PLUGIN_OP = "BiSelectiveScan"

TENSORRT_MISSING = (
    "TensorRT's Python package is not installed, so no engine can be built or run here.\n"
    "  Install it to match your CUDA version: `pip install tensorrt` (or tensorrt-cu12 / tensorrt-cu13),\n"
    "  or NVIDIA's tar/deb packages (https://docs.nvidia.com/deeplearning/tensorrt/latest/installing-tensorrt/),\n"
    "  plus `pip install 'vimdeploy[tensorrt]'` for cuda-python.\n"
    "  Without TensorRT, run the ONNX model with ONNX Runtime instead: "
    "`vimdeploy infer model.onnx --input batch.npy -o out.npz` (or `vimdeploy predict model.onnx img.jpg`)."
)


class TensorRTMissing(VimdeployError):
    """TensorRT (or cuda-python) is not importable."""


def import_tensorrt():
    """`import tensorrt`, or a TensorRTMissing that says what to install."""
    try:
        import tensorrt as trt
    except ImportError as e:  # also OSError-free stubs: PyPI's stub package raises on import
        raise TensorRTMissing(f"{TENSORRT_MISSING}\n  (import tensorrt: {e})") from None
    except Exception as e:  # noqa: BLE001 - the sdist stub raises plain errors when its download failed
        raise TensorRTMissing(f"{TENSORRT_MISSING}\n  (import tensorrt: {type(e).__name__}: {e})") from None
    if _version_tuple(trt.__version__) < MIN_TENSORRT:
        raise TensorRTMissing(f"TensorRT {trt.__version__} is too old: vimdeploy needs TensorRT >= 10.0 "
                              "(10.12+ or 11.x recommended): `pip install -U tensorrt`.")
    return trt


def import_cudart():
    """cuda-python's runtime API: `cuda.bindings.runtime` (cuda-python >= 12.6), else `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise TensorRTMissing("cuda-python is not installed (TensorRT's samples use it for buffers and "
                                  "streams): `pip install 'cuda-python>=12'` or `pip install 'vimdeploy[tensorrt]'`.") from None
    return cudart


def cuda_call(result):
    """cuda-python returns (error, *values): raise on error, unwrap the values."""
    err, *values = result
    if int(err) != 0:
        cudart = import_cudart()
        name = cudart.cudaGetErrorName(err)[1]
        raise VimdeployError(f"CUDA error {int(err)} ({name.decode() if isinstance(name, bytes) else name})")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in str(version).split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


# --------------------------------------------------------------------------------------------
# Pure helpers (tested without TensorRT)

def parse_range(text: str | None, what: str = "--batch") -> tuple[int, int, int] | None:
    """"1:8:32" -> (1, 8, 32); "8" -> (8, 8, 8); None -> None. min <= opt <= max, all >= 1."""
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
    return tuple(values)


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
        f"--{requested} ...) or drop --{requested}.")


def make_profile(input_shape, batch: tuple | None, size: tuple | None) -> dict[str, list[list[int]]]:
    """min/opt/max NCHW shapes for an ONNX input shape such as [None, 3, 224, 224].

    Dimensions given as None (symbolic) take the ranges; fixed ones must agree with them.
    """
    n, c, h, w = input_shape
    if not isinstance(c, int):
        raise ArtifactError(f"the ONNX input has a symbolic channel dimension ({c}); expected 3.")
    if isinstance(n, int):
        if batch and batch != (n, n, n):
            raise InputError(f"this ONNX has a fixed batch of {n}; --batch {':'.join(map(str, batch))} cannot apply "
                             "(export with --batch dynamic for a batch range).")
        batch = (n, n, n)
    elif batch is None:
        batch = (1, 8, 32)
    if isinstance(h, int) and isinstance(w, int):
        if size and size != (h, h, h):
            raise InputError(f"this ONNX has a fixed {h}x{w} input; --img-size cannot change it (re-export instead).")
        hs, ws = (h, h, h), (w, w, w)
    else:
        if size is None:
            raise InputError("this ONNX has a dynamic resolution: pass --img-size MIN:OPT:MAX (e.g. 224:224:448).")
        hs = (h,) * 3 if isinstance(h, int) else size
        ws = (w,) * 3 if isinstance(w, int) else size
    return {k: [batch[i], c, hs[i], ws[i]] for i, k in enumerate(("min", "opt", "max"))}


def onnx_summary(path: str | Path) -> dict:
    """Input name/shape, precision metadata and plugin nodes of an ONNX (structure only)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types on bad bytes
        raise ArtifactError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e}).") from None
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1:
        raise ArtifactError(f"{path}: expected one input (images), found {len(inputs)}.")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ArtifactError(f"{path}: the input must be NCHW; its shape is {dims}.")
    meta = {p.key: p.value for p in proto.metadata_props}
    dtype_names = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16"}
    io = {v.name: {"dtype": dtype_names.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
                   "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]}
          for v in [inputs[0], *proto.graph.output]}
    plugin_versions = sorted({next((a.s.decode() for a in n.attribute if a.name == "plugin_version"), "1")
                              for n in proto.graph.node if n.op_type == PLUGIN_OP})
    return {"input": inputs[0].name, "shape": dims, "precision": meta.get("vimdeploy.precision", "fp32"),
            "outputs": [o.name for o in proto.graph.output], "io": io, "plugin_versions": plugin_versions,
            "metadata": {k[len("vimdeploy."):]: v for k, v in meta.items() if k.startswith("vimdeploy.")}}


# --------------------------------------------------------------------------------------------
# Plugin and environment

_loaded_plugins: dict[str, str] = {}


def find_plugin(explicit: str | Path | None = None) -> Path:
    """--plugin, else the self-registering library that `vimdeploy plugin build` made."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ArtifactError(f"plugin library {path} does not exist.")
        return path.resolve()
    try:
        from .ops.native import library_paths
    except ImportError as e:  # pragma: no cover - plugin.py imports torch
        raise ArtifactError(f"cannot locate the TensorRT plugin ({e}); pass --plugin PATH.") from None
    paths = library_paths()
    if "trt_plugin" in paths:
        return paths["trt_plugin"].resolve()
    raise ArtifactError(
        "this model has BiSelectiveScan nodes and needs the TensorRT plugin, which is not built: run "
        "`vimdeploy plugin build --tensorrt-root /path/to/TensorRT` or pass --plugin libvimdeploy_trt_plugin.so "
        "(or export with --scan onnx for a plugin-free model).")


def load_plugin(path: str | Path, trt=None) -> str:
    """Load a plugin library into this process once; returns how it was registered.

    libvimdeploy_trt_plugin.so registers its creator when loaded (ctypes is enough, as in
    Polygraphy's --plugins); libvimdeploy_trt_plugin_dynamic.so exports getCreators and
    must go through IPluginRegistry.load_library. Loading both would register the creator
    twice, which load_library refuses; so one library per process.
    """
    key = str(Path(path).resolve())
    if key in _loaded_plugins:
        return _loaded_plugins[key]
    if _loaded_plugins:
        other = next(iter(_loaded_plugins))
        raise ArtifactError(f"a plugin library is already loaded in this process ({other}); "
                            f"cannot also load {key} (the creators would clash).")
    try:
        lib = ctypes.CDLL(key, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise ArtifactError(f"cannot load plugin library {key}: {e}") from None
    how = "static"
    if hasattr(lib, "getCreators"):
        trt = trt or import_tensorrt()
        if not trt.get_plugin_registry().load_library(key):
            raise ArtifactError(f"TensorRT's plugin registry refused {key} (IPluginRegistry.load_library).")
        how = "load_library"
    _loaded_plugins[key] = how
    return how


def environment(trt, device: int = 0) -> dict:
    """TensorRT, CUDA runtime/driver versions and the GPU: what an engine is tied to."""
    cudart = import_cudart()
    prop = cuda_call(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    fmt = lambda v: f"{v // 1000}.{(v % 1000) // 10}"  # noqa: E731 - 12080 -> "12.8"
    return {"tensorrt": trt.__version__,
            "cuda_runtime": fmt(cuda_call(cudart.cudaRuntimeGetVersion())),
            "cuda_driver": fmt(cuda_call(cudart.cudaDriverGetVersion())),
            "gpu": name.strip("\x00").strip(),
            "compute_capability": f"{prop.major}.{prop.minor}"}


def plugin_record(path: Path | None, versions) -> dict | None:
    if path is None:
        return None
    return {"path": str(path), "sha256": file_sha256(path), "plugin_versions": list(versions),
            "name": PLUGIN_OP}


# --------------------------------------------------------------------------------------------
# The build

def _progress_monitor(trt):
    """A trt.IProgressMonitor drawing one tqdm bar per build phase (nested phases indent)."""
    from tqdm import tqdm

    class TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars = {}
            self.cancel = False

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = len(self.bars)
            self.bars[phase_name] = tqdm(total=num_steps, desc="  " * depth + phase_name, position=depth,
                                         leave=False, file=sys.stderr, unit="step")

        def step_complete(self, phase_name, step):
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return not self.cancel  # False asks TensorRT to cancel the build

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return TqdmProgressMonitor()


def _logger(trt, verbose: bool):
    """A trt.ILogger that prints warnings (all with verbose) and remembers errors, so that a
    failed parse or build can say why."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if level <= int(trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING):
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return Logger()


def _network_flags(trt) -> int:
    # TensorRT 10.12+: ask for strongly typed by name (TensorRT 11 renumbered the enum and
    # ignores the flag, being always strongly typed). Not a hard-coded bit.
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def build_engine(onnx_path, output, *, precision: str | None = None, convert_options: dict | None = None,
                 plugin: str | Path | None = None, batch: str | None = None, img_size: str | None = None,
                 timing_cache: str | Path | None = None, workspace_mb: int | None = None,
                 opt_level: int | None = None, tf32: bool = False, force: bool = False,
                 progress: bool = True, verbose: bool = False, echo=None) -> dict:
    """Build `output` (.plan) and `output`.json from a vimdeploy ONNX. Returns the sidecar."""
    echo = echo or (lambda msg: None)
    onnx_path, output = Path(onnx_path), Path(output)
    batch_range = parse_range(batch, "--batch")
    size_range = parse_range(img_size, "--img-size")
    for p in (output, sidecar_path(output)):
        if p.exists() and not force:
            raise VimdeployError(f"{p} already exists; pass --force to replace it.")
    if not output.parent.exists():
        raise VimdeployError(f"output folder {output.parent} does not exist.")
    trt = import_tensorrt()  # before any work: without TensorRT nothing else matters
    import_cudart()

    info = onnx_summary(onnx_path)
    profile = make_profile(info["shape"], batch_range, size_range)
    convert_to = resolve_precision(info["precision"], precision)
    plugin_path = None
    if info["plugin_versions"]:
        plugin_path = find_plugin(plugin)
        load_plugin(plugin_path, trt)
        echo(f"plugin {plugin_path} loaded")
    elif plugin:
        echo(f"note: {onnx_path.name} has no {PLUGIN_OP} nodes; --plugin is not needed")

    with tempfile.TemporaryDirectory(prefix="vimdeploy-build-") as tmpdir:
        source = onnx_path
        if convert_to:
            try:
                from .export.precision import convert_precision
            except ImportError as e:
                raise VimdeployError(f"--{convert_to} on an fp32 ONNX needs vimdeploy's precision pass "
                                     f"(vimdeploy.export.precision), which cannot be imported: {e}. "
                                     f"Convert first with `vimdeploy convert --precision {convert_to}`.") from None
            echo(f"converting {onnx_path.name} to {convert_to} (the precision lives in the ONNX)")
            source = Path(tmpdir) / f"model_{convert_to}.onnx"
            convert_precision(onnx_path, source, convert_to, **(convert_options or {}))
            info["io"] = onnx_summary(source)["io"]  # the pass may change I/O types
        engine_bytes, timings = _build(trt, source, info["input"], profile, timing_cache, workspace_mb,
                                       opt_level, tf32, progress, verbose, echo)

    sidecar = {
        "format": "vimdeploy-engine/1",
        "vimdeploy": __version__,
        **environment(trt),
        "precision": convert_to or info["precision"],
        "strongly_typed": True,
        "tf32": bool(tf32),
        "input": info["input"],
        "outputs": info["outputs"],
        "io": info["io"],
        "profiles": [profile],
        "builder": {"optimization_level": opt_level, "workspace_mb": workspace_mb,
                    "timing_cache": str(timing_cache) if timing_cache else None, "build_s": round(timings, 1)},
        "plugin": plugin_record(plugin_path, info["plugin_versions"]),
        "onnx": {"path": str(onnx_path), "sha256": file_sha256(onnx_path), **{
            k: v for k, v in info["metadata"].items() if k in ("variant", "img_size", "scan", "batch", "checkpoint_sha256")}},
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
    }
    # Engine first, then its sidecar: a reader that finds a sidecar finds its engine.
    with atomic_path(output, force=force) as tmp:
        Path(tmp).write_bytes(engine_bytes)
    with atomic_path(sidecar_path(output), force=force) as tmp:
        Path(tmp).write_text(json.dumps(sidecar, indent=2) + "\n")
    return {"output": str(output), "sidecar": str(sidecar_path(output)),
            "size_mb": output.stat().st_size / 1e6, **sidecar}


def _build(trt, onnx_path: Path, input_name: str, profile: dict, timing_cache, workspace_mb, opt_level,
           tf32, progress, verbose, echo) -> tuple[bytes, float]:
    log = _logger(trt, verbose)
    builder = trt.Builder(log)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, log)
    # parse_from_file (not parse(bytes)) so that external-data ONNX files find their weights.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ArtifactError(f"TensorRT's ONNX parser rejected {onnx_path.name}:\n  " + "\n  ".join(errors or log.errors))

    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)
    # TF32 changes fp32 matmul results by ~1e-3 relative; off unless asked (validate's fp32
    # tolerance is 1e-4). The flag exists on 10.x and 11.x; guard anyway.
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    opt = builder.create_optimization_profile()
    opt.set_shape(input_name, profile["min"], profile["opt"], profile["max"])
    config.add_optimization_profile(opt)
    cache = None
    if timing_cache:
        data = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    if progress and hasattr(config, "progress_monitor"):
        config.progress_monitor = _progress_monitor(trt)

    echo(f"building: {network.num_layers} layers, profile min {profile['min']} opt {profile['opt']} max {profile['max']}")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    elapsed = time.perf_counter() - start
    if serialized is None:
        raise VimdeployError("TensorRT failed to build the engine:\n  " + "\n  ".join(log.errors or ["(no error logged)"]))
    if cache is not None:
        # Save what this build learned (TensorRT's samples/python/common.py save_timing_cache).
        with atomic_path(timing_cache) as tmp:
            Path(tmp).write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized)), elapsed
