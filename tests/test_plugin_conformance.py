"""The plugin through its TensorRT interface without TensorRT: plugins/tests/conformance.cpp.

The harness loads both plugin libraries as TensorRT does and calls them in TensorRT's order
(its header says what exactly), and checks that attributes, shapes and types that break the
contract are refused and reported at createPlugin, getOutputShapes, configurePlugin and
enqueue (host only: no GPU needed). pytest supplies what it needs from the real thing:
  * the BiSelectiveScan node of a real export (the bundled digits model), dumped as text
    (`node.txt`): the harness builds the creator's fields from it as onnx-tensorrt's
    loadFields does;
  * cases (`case.txt`, inputs `in0..in14.bin`, `expected.bin` and a per-element `bound.bin`,
    both float64): the fp64 PyTorch recurrence of tests/test_plugin_cuda.py and its bounds.

Runs where TensorRT headers are found ($TENSORRT_INCLUDE_DIR, ':'-separated for several
versions, or $TensorRT_INCLUDE_DIR, or $TENSORRT_ROOT/include) and nvcc + cmake are: the
host part (everything up to enqueue) everywhere, enqueue where a GPU is. With
VIMDEPLOY_SANITIZER=1 the GPU runs go through `compute-sanitizer --tool memcheck` with a
workspace of exactly getWorkspaceSize() bytes; otherwise a guard region after the workspace
must come back untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUILD_SMS, RUN_SMS = 114, 132  # H100 PCIe builds the engine, H100 SXM runs it


def header_dirs() -> list[Path]:
    found = []
    for var in ("TENSORRT_INCLUDE_DIR", "TensorRT_INCLUDE_DIR"):
        found += [Path(d) for d in os.environ.get(var, "").split(os.pathsep) if d]
    if os.environ.get("TENSORRT_ROOT"):
        found.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    return [d for d in dict.fromkeys(found) if (d / "NvInferRuntime.h").is_file()]


def trt_version(include: Path) -> str:
    text = (include / "NvInferVersion.h").read_text()
    major = re.search(r"#define (?:TRT_MAJOR_ENTERPRISE|NV_TENSORRT_MAJOR) (\d+)", text).group(1)
    minor = re.search(r"#define (?:TRT_MINOR_ENTERPRISE|NV_TENSORRT_MINOR) (\d+)", text).group(1)
    return f"{major}.{minor}"


HEADERS = header_dirs()
GPU = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(
    not HEADERS,
    reason="no TensorRT headers: set TENSORRT_INCLUDE_DIR (':'-separated), TensorRT_INCLUDE_DIR or "
    "TENSORRT_ROOT (the headers are in no pip wheel; NVIDIA/TensorRT's include/ on GitHub has them)",
)


def cuda_arch() -> str:
    if GPU:
        major, minor = torch.cuda.get_device_capability()
        return f"{major}{minor}"
    return os.environ.get("VIMDEPLOY_TEST_CUDA_ARCHS", "80")


@pytest.fixture(scope="module", params=HEADERS, ids=lambda d: f"trt{trt_version(d)}")
def build(request, tmp_path_factory) -> dict:
    """The plugins and the harness built against one header set (one CUDA architecture)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    from vimdeploy.ops.build import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: the plugin's kernel needs the CUDA toolkit to compile")
    out = tmp_path_factory.mktemp(f"conformance-trt{trt_version(request.param)}")
    configure = [
        "cmake",
        "-S",
        str(REPO / "plugins"),
        "-B",
        str(out),
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch()}",
        f"-DTensorRT_INCLUDE_DIR={request.param}",
        "-DTENSORRT_ROOT=",
        "-DVIMDEPLOY_BUILD_CONFORMANCE=ON",
    ]
    for cmd in (configure, ["cmake", "--build", str(out), "-j", str(os.cpu_count() or 2)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    major = trt_version(request.param).split(".")[0]
    paths = {
        "static": out / "libvimdeploy_trt_plugin.so",
        "dynamic": out / "libvimdeploy_trt_plugin_dynamic.so",
        "harness": out / "conformance" / "vimdeploy_conformance",
        "stub": out / "conformance" / f"libnvinfer.so.{major}",
        "kernels": out / "libvimdeploy_kernels.so",
        "major": major,
    }
    for k, p in paths.items():
        assert k == "major" or p.is_file(), f"{p} was not built"
    return paths


def write_node(node: onnx.NodeProto, path: Path) -> Path:
    lines = [f"op_type {node.op_type}", f"name {node.name or node.op_type}"]
    for a in node.attribute:
        kind = onnx.AttributeProto.AttributeType.Name(a.type)
        value = {"INT": lambda a: str(a.i), "FLOAT": lambda a: repr(a.f), "STRING": lambda a: a.s.decode()}.get(kind)
        lines.append(f"attr {a.name} {kind} {value(a) if value else ''}".rstrip())
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def exported_node(tmp_path_factory) -> onnx.NodeProto:
    """A BiSelectiveScan node as `vimdeploy export` writes it (the digits model, plugin flavor)."""
    from vimdeploy import digits
    from vimdeploy.export import export_onnx

    d = tmp_path_factory.mktemp("node")
    export_onnx(digits.WEIGHTS, d / "digits.onnx", batch="dynamic", scan="plugin")
    nodes = [n for n in onnx.load(d / "digits.onnx").graph.node if n.op_type == "BiSelectiveScan"]
    assert nodes
    return nodes[0]


def write_case(
    d: Path,
    batch: int,
    L: int,
    E: int,
    dtype: torch.dtype,
    max_batch: int,
    max_L: int,
    data: bool,
    seed: int = 0,
    node: onnx.NodeProto | None = None,
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "case.txt").write_text(
        f"dtype {'fp16' if dtype == torch.float16 else 'fp32'}\nbatch {batch}\nL {L}\nE {E}\n"
        f"max_batch {max_batch}\nmax_L {max_L}\n"
    )
    if data:
        from tests.test_plugin_cuda import ground_truth, make_inputs

        args = make_inputs(batch, L, E, dtype, seed=seed, device="cpu")
        for i, a in enumerate(args):
            (d / f"in{i}.bin").write_bytes(a.contiguous().numpy().tobytes())
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}  # what the plugin gets
        ref, yf, yb, gate, mag = ground_truth(args, bool(attrs["delta_softplus"]), float(attrs["out_scale"]))
        # The bounds of tests/test_plugin_cuda.check: fp32-level, plus the fp16 roundings.
        bound = 1e-5 * (ref.abs() + mag) + 1e-7 * ref.abs().max()
        if dtype == torch.float16:
            bound = bound + 2.0**-11 * (ref.abs() + (yf.abs() + yb.abs()) * gate.abs()) * 1.1
        (d / "expected.bin").write_bytes(ref.numpy().astype(np.float64).tobytes())
        (d / "bound.bin").write_bytes(bound.numpy().astype(np.float64).tobytes())
    return d


# Shapes: (batch, L, E, dtype, max_batch, max_L). The first runs unsplit; the second splits
# L into chunks (batch 1, long L: the workspace path); the third is the case of an
# engine built on 114 SMs run on 132 (Vim-Ti E=384, batch 20, L 2048); E not a multiple of
# the 32-channel tile; fp32 and fp16.
CASES = [
    (2, 197, 64, torch.float32, 4, 256),
    (1, 1024, 64, torch.float16, 2, 2048),
    (20, 2048, 384, torch.float16, 21, 2048),
    (3, 61, 37, torch.float32, 8, 64),
]


def run_harness(
    build: dict, library: str, node_txt: Path, cases: list[Path], *extra: str, sanitizer: bool = False
) -> subprocess.CompletedProcess:
    cmd = [str(build["harness"]), "--plugin", str(build[library]), "--node", str(node_txt)]
    cmd += ["--dynamic"] if library == "dynamic" else ["--stub", str(build["stub"])]
    for c in cases:
        cmd += ["--case", str(c)]
    cmd += list(extra)
    if sanitizer:
        tool = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
        cmd = [tool, "--tool", "memcheck", "--error-exitcode", "97", *cmd, "--exact-workspace"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800)


@pytest.mark.parametrize("library", ["static", "dynamic"])
def test_host_part(build, exported_node, tmp_path, library):
    """Everything TensorRT calls before enqueue, for both libraries, fp32 and fp16 cases."""
    node = write_node(exported_node, tmp_path / "node.txt")
    cases = [write_case(tmp_path / f"c{i}", *c, data=False) for i, c in enumerate(CASES)]
    r = run_harness(build, library, node, cases, "--host-only", "--build-sms", str(BUILD_SMS))
    assert r.returncode == 0 and " 0 failures" in r.stdout, r.stdout + r.stderr
    # The harness also feeds it what breaks the contract (conformance.cpp, "rejections"): each
    # refusal names the method and the input, on TensorRT's logger (dynamic library) or stderr.
    log = r.stdout if library == "dynamic" else r.stderr
    for message in (
        "createPlugin: delta_softplus must be 0 or 1, got 2",
        "createPlugin: out_scale must be finite",
        "getOutputShapes: input 9 (A_fwd) has d_state = 17",
        "configurePlugin: input 11 (D_fwd) has E = ",
        "enqueue: input 14 (dt_bias_bwd) has E = ",
        "enqueue: input 3 (B_fwd) has L = ",
        "enqueue: input 9 (A_fwd) must be fp32",
    ):
        assert message in log, message


def test_workspace_is_the_same_on_any_gpu(build, exported_node, tmp_path):
    """getWorkspaceSize depends on the shapes TensorRT knows at build time, not on the GPU."""
    node = write_node(exported_node, tmp_path / "node.txt")
    cases = [write_case(tmp_path / f"c{i}", *c, data=False) for i, c in enumerate(CASES)]
    sizes = {}
    for sms in (16, BUILD_SMS, RUN_SMS, 1000):
        r = run_harness(build, "dynamic", node, cases, "--host-only", "--build-sms", str(sms))
        assert r.returncode == 0, r.stdout + r.stderr
        sizes[sms] = re.findall(r"workspace (\d+) bytes", r.stdout)
        assert len(sizes[sms]) == len(CASES)
    assert len({tuple(v) for v in sizes.values()}) == 1, sizes


def test_kernel_c_api_refuses_what_breaks_the_contract(build):
    """The CUDA kernel's C entry point checks its params struct before any CUDA call (no GPU
    needed): the structs the CPU kernel refuses, and variant ids it does not have (an unknown
    id ran variant 4 once)."""
    import ctypes

    from tests.test_scan_cpu import BAD_PARAMS, INVALID, host_params

    lib = ctypes.CDLL(str(build["kernels"]))
    scan = lib.vimdeploy_bi_selective_scan_ex
    scan.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    bad = {
        **BAD_PARAMS,
        "variant 8": (dict(), INVALID),
        "variant -1": (dict(), INVALID),
        "num_chunks -1": (dict(), INVALID),
    }
    knobs = {"variant 8": (0, 8), "variant -1": (0, -1), "num_chunks -1": (-1, 0)}
    for what, (change, code) in bad.items():
        p, y, keep = host_params((2, 5, 16), **change)
        num_chunks, variant = knobs.get(what, (0, 0))
        assert scan(ctypes.addressof(p), None, 0, None, num_chunks, variant) == code, what
        assert (y == 7.0).all(), what


def test_node_of_another_plugin_version_is_not_found(build, exported_node, tmp_path):
    """plugin_version selects the creator (exact match, as onnx-tensorrt looks it up): a
    version-2 node finds no creator; the creator itself never sees the field."""
    node = onnx.NodeProto()
    node.CopyFrom(exported_node)
    node.attribute.append(onnx.helper.make_attribute("plugin_version", "2"))
    for library in ("static", "dynamic"):
        r = run_harness(build, library, write_node(node, tmp_path / "node2.txt"), [], "--expect-missing")
        assert r.returncode == 0, r.stdout + r.stderr


def needed(library: Path) -> list[str]:
    if shutil.which("readelf") is None:
        pytest.skip("readelf not found")
    out = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def test_self_registering_library_can_load(build):
    """Its one TensorRT import, getPluginRegistry, must resolve: the library names libnvinfer
    (TensorRT's Python package loads libnvinfer RTLD_LOCAL, so nothing else provides it)."""
    assert f"libnvinfer.so.{build['major']}" in needed(build["static"])


@pytest.mark.parametrize("library", ["static", "dynamic"])
def test_plugin_is_one_file(build, library):
    """The kernel is linked in: no libvimdeploy_kernels.so to find through RUNPATH."""
    assert not [n for n in needed(build[library]) if "vimdeploy" in n]


@pytest.fixture(scope="module")
def gpu_cases(exported_node, tmp_path_factory) -> tuple[Path, list[Path]]:
    """The node and the cases with data (inputs, fp64 reference, bounds): written once."""
    d = tmp_path_factory.mktemp("cases")
    return write_node(exported_node, d / "node.txt"), [
        write_case(d / f"c{i}", *c, data=True, seed=i, node=exported_node) for i, c in enumerate(CASES)
    ]


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="enqueue needs an NVIDIA GPU (torch.cuda.is_available() is false)")
@pytest.mark.parametrize("library,run_sms", [("static", RUN_SMS), ("dynamic", RUN_SMS), ("dynamic", 1000)])
def test_enqueue_matches_the_reference(build, gpu_cases, library, run_sms):
    """enqueue and CUDA graph replay against the fp64 reference, built on 114 SMs and run on
    132 (or on a GPU of 1000 SMs, which wants more chunks than the workspace holds), inside
    exactly the workspace it asked for."""
    node, cases = gpu_cases
    sanitizer = os.environ.get("VIMDEPLOY_SANITIZER") == "1"
    r = run_harness(
        build, library, node, cases, "--build-sms", str(BUILD_SMS), "--run-sms", str(run_sms), sanitizer=sanitizer
    )
    assert r.returncode == 0 and " 0 failures" in r.stdout, (r.stdout + r.stderr)[-8000:]
    if sanitizer:
        assert "ERROR SUMMARY: 0 errors" in r.stdout + r.stderr
