"""The native CPU kernel (plugins/cpu/bi_selective_scan_cpu.cpp) against the fp64 recurrence,
through every way it is reached: the "cpu" and "auto" backends, torch.compile/export, ONNX Runtime.

Bounds: the CUDA tests' fp32 bound (rel. 2e-5 of the output's scale, tests/test_scan.py) and,
for fp16 activations, the fp16 rounding of the output (rel. 1e-3)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from vimdeploy.errors import VimdeployError
from vimdeploy.ops import ScanInputs, get_scan, native

from .test_scan import close, reference64, scan_inputs

pytestmark = pytest.mark.skipif(
    not native.cpu_available(), reason="the native CPU scan is not built (no C++ compiler?)"
)


def cpu_scan(inputs, **attrs):
    return get_scan("cpu")(inputs, **attrs)


@pytest.mark.parametrize(
    "b,L,E", [(1, 1, 16), (2, 2, 8), (3, 7, 24), (1, 197, 384), (2, 197, 50), (1, 730, 32), (1, 2048, 16), (1, 8192, 8)]
)
@pytest.mark.parametrize("softplus,scale", [(True, 0.5), (False, 1.0)])
def test_cpu_kernel_matches_fp64_recurrence(b, L, E, softplus, scale):
    inputs = scan_inputs(b, L, E, seed=L + E)
    if not softplus:  # without softplus dt must already be a positive step size
        inputs = inputs._replace(
            dt_fwd=inputs.dt_fwd.abs() * 0.3,
            dt_bwd=inputs.dt_bwd.abs() * 0.3,
            dt_bias_fwd=inputs.dt_bias_fwd.abs(),
            dt_bias_bwd=inputs.dt_bias_bwd.abs(),
        )
    got = cpu_scan(inputs, delta_softplus=softplus, out_scale=scale)
    assert got.dtype == torch.float32 and got.shape == (b, L, E)
    ok, err = close(got, reference64(inputs, delta_softplus=softplus, out_scale=scale))
    assert ok, f"cpu kernel off by {err}"


def test_cpu_kernel_fp16_activations():
    inputs = scan_inputs(2, 300, 40, seed=11, dtype=torch.float16)
    got = cpu_scan(inputs)
    assert got.dtype == torch.float16
    ok, err = close(got, reference64(inputs), rel=1e-3)
    assert ok, err


@pytest.mark.parametrize("L", [6085, 12000])
def test_cpu_kernel_long_sequences_with_strong_decay_stay_finite(L):
    inputs = scan_inputs(1, L, 16, seed=5, dt_shift=3.0, a_scale=3.0)
    got = cpu_scan(inputs)
    assert torch.isfinite(got).all()
    assert close(got, reference64(inputs))[0]


def test_thread_count_does_not_change_the_result():
    """Tasks split channels, batch rows and directions; per element the arithmetic is the same."""
    from vimdeploy.ops.cpu import run

    inputs = scan_inputs(3, 120, 72, seed=2)
    one = run(inputs, threads=1)
    for threads in (2, 5):
        assert torch.equal(run(inputs, threads=threads), one)


def test_non_contiguous_and_bf16_inputs_are_handled():
    inputs = scan_inputs(2, 33, 32, seed=4)
    # x_fwd as a strided view (every other channel of a wider tensor), activations in bf16
    wide = torch.randn(2, 33, 64)
    strided = inputs._replace(x_fwd=wide[..., ::2])
    assert not strided.x_fwd.is_contiguous()
    assert close(cpu_scan(strided), reference64(strided))[0]
    bf16 = inputs.map(lambda t: t.to(torch.bfloat16) if t.dim() == 3 else t)
    assert cpu_scan(bf16).dtype == torch.bfloat16


def test_bad_shapes_are_refused():
    inputs = scan_inputs(1, 5, 8, N=4)  # d_state 4: the kernel supports 16 only
    with pytest.raises(VimdeployError, match=r"A \(E, 16\)"):
        cpu_scan(inputs)
    inputs = scan_inputs(1, 5, 8)
    with pytest.raises(VimdeployError, match="B_fwd"):
        cpu_scan(inputs._replace(B_fwd=inputs.B_fwd[:, :4]))


def test_auto_uses_the_native_kernel_on_cpu():
    inputs = scan_inputs(1, 50, 32, seed=9)
    assert torch.equal(get_scan("auto")(inputs), cpu_scan(inputs))
    # d_state 4 (not a Vim) runs on the PyTorch scan instead of failing
    small = scan_inputs(1, 9, 8, N=4)
    assert close(get_scan("auto")(small), reference64(small))[0]


def test_auto_falls_back_to_pytorch_and_says_so_once(monkeypatch):
    from vimdeploy.ops import dispatch

    monkeypatch.setattr(dispatch, "cpu_available", lambda: False)
    monkeypatch.setattr(dispatch, "_warned", set())
    inputs = scan_inputs(1, 20, 16, seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = get_scan("auto")(inputs)
        get_scan("auto")(inputs)
    messages = [str(w.message) for w in caught if "native CPU scan is not built" in str(w.message)]
    assert len(messages) == 1 and "pip install" in messages[0]
    assert close(a, reference64(inputs))[0]


def test_one_opaque_node_for_torch_export_and_compile():
    from vimdeploy.ops.cpu import bi_selective_scan_cpu

    class Layer(torch.nn.Module):
        def forward(self, *tensors):
            return bi_selective_scan_cpu(ScanInputs(*tensors), out_scale=0.5) * 2

    inputs = scan_inputs(1, 12, 16, seed=1)
    ep = torch.export.export(Layer(), tuple(inputs))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("vimdeploy.bi_selective_scan_cpu.default") == 1
    compiled = torch.compile(Layer(), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*inputs), Layer()(*inputs))


def test_model_golden_through_the_cpu_kernel(golden, golden_model):
    golden_model.scan = "cpu"
    try:
        with torch.inference_mode():
            logits = golden_model(torch.from_numpy(golden["input"]))
    finally:
        golden_model.scan = "auto"
    np.testing.assert_allclose(logits.numpy(), golden["logits"], rtol=0, atol=1e-4)


def test_installs_without_a_compiler(tmp_path):
    """`pip install` must still work where no C++ compiler exists (the extension is optional)."""
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # a copy: no build/ folder or built library of the checkout can leak in
    shutil.copytree(
        repo,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "*.so", "__pycache__", "*.egg-info", ".pytest_cache", "docs", "benchmarks"
        ),
    )
    env = {"CC": "false", "CXX": "false", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    import zipfile

    (wheel,) = tmp_path.glob("vimdeploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vimdeploy/ops/native.py" in names
    assert not [n for n in names if n.startswith("vimdeploy/ops/_scan_cpu")]  # no compiled extension


def test_cuda_backend_refuses_cpu_tensors_with_a_reason():
    from vimdeploy.ops.native import PluginError

    with pytest.raises(PluginError, match="cuda tensors"):
        get_scan("cuda")(scan_inputs(1, 4, 16))


@pytest.mark.parametrize(
    "L,b,E,dtype,scale",
    [
        (1, 3, 384, torch.float32, 0.5),
        (7, 3, 384, torch.float16, 0.5),
        (197, 2, 768, torch.float32, 0.5),
        (197, 1, 1536, torch.float16, 1.0),
        (730, 1, 384, torch.float16, 1.0),
        (2048, 1, 384, torch.float32, 1.0),
        (197, 2, 100, torch.float32, 0.5),
        (61, 5, 37, torch.float16, 0.5),
        (6085, 1, 384, torch.float32, 0.5),
    ],
    ids=str,
)
def test_cpu_kernel_meets_the_cuda_tests_bound(L, b, E, dtype, scale):
    """The CUDA kernel's elementwise bound (tests/test_plugin_cuda.py `check`: fp32 error
    relative to the summed terms, fp16 rounding of the output) on its Vim-like inputs
    (dt mostly 0.001..0.1 with some up to 25, exercising softplus's > 20 rule)."""
    from .test_plugin_cuda import check, make_inputs

    args = make_inputs(b, L, E, dtype, seed=L * 7 + b * 3 + E, device="cpu")
    check(cpu_scan(args, delta_softplus=True, out_scale=scale), args, True, scale, what=f"cpu L={L} b={b} E={E}")


def test_strided_b_c_are_copied_for_every_backend_but_cuda():
    """Only the CUDA kernel reads B/C slices in place (bc_stride); `prepare` makes them dense
    otherwise, and a mixed set of strides is made dense too."""
    import torch

    from vimdeploy.ops.common import bc_row_stride, prepare
    from vimdeploy.ops.inputs import INPUT_NAMES, PARAMETERS, ScanInputs

    b, L, E = 2, 5, 8
    t = {n: torch.randn((E, 16) if n.startswith("A_") else (E,) if n in PARAMETERS else (b, L, E)) for n in INPUT_NAMES}
    out = torch.randn(b, L, 48)
    t.update(B_fwd=out[..., 16:32], C_fwd=out[..., 32:48], B_bwd=out[..., 16:32], C_bwd=out[..., 32:48])
    inputs = ScanInputs(**t)
    assert bc_row_stride(inputs, torch.float32) == 48
    assert bc_row_stride(inputs, torch.float16) == 0  # would need a cast anyway
    dense, _ = prepare(inputs, "cpu")
    assert all(getattr(dense, n).is_contiguous() for n in ("B_fwd", "C_fwd", "B_bwd", "C_bwd"))
    mixed = inputs._replace(C_bwd=torch.randn(b, L, 16))
    assert bc_row_stride(mixed, torch.float32) == 0


# Params structs that break the contract, as changes to a valid one, and the code the C entry
# points (CPU and CUDA: plugins/include/vimdeploy/scan_check.h) must return for each.
INVALID, UNSUPPORTED = -1, -2  # VIMDEPLOY_ERROR_INVALID_ARGUMENT, VIMDEPLOY_ERROR_UNSUPPORTED
BAD_PARAMS = {
    "out_scale NaN": (dict(out_scale=float("nan")), INVALID),
    "out_scale inf": (dict(out_scale=float("inf")), INVALID),
    "delta_softplus 2": (dict(delta_softplus=2), INVALID),
    "batch -1": (dict(batch=-1), INVALID),
    "L -1": (dict(L=-1), INVALID),
    "E -3": (dict(E=-3), INVALID),
    "bc_stride 8": (dict(bc_stride=8), INVALID),
    "null D_bwd": (dict(D_bwd=None), INVALID),
    "null y": (dict(y=None), INVALID),
    "N 8": (dict(N=8), UNSUPPORTED),
    "dtype 5": (dict(dtype=5), UNSUPPORTED),
}


def host_params(shape: tuple[int, int, int], **change):
    """A valid params struct over host buffers (float32, (b, L, E) = shape), with `change` applied; returns it
    with y and the buffers, which must stay alive while it is used."""
    from vimdeploy.contract import input_shapes

    arrays = [np.ones(s, np.float32) for s in input_shapes(*shape)]
    y = np.full(shape, 7.0, np.float32)
    p = native.ScanParams.from_pointers(
        [a.ctypes.data for a in arrays], y.ctypes.data, *shape, 16, "float32", True, 0.5
    )
    for name, value in change.items():
        setattr(p, name, value)
    return p, y, arrays


def test_c_entry_point_checks_the_params_struct():
    """vimdeploy_bi_selective_scan_cpu refuses a params struct that breaks the contract (the check
    shared with the CUDA kernel) before it reads a pointer, and leaves y untouched."""
    import ctypes

    lib = native.load_cpu_library()
    bad = {**BAD_PARAMS, "bc_stride 32 (CPU: dense only)": (dict(bc_stride=32), UNSUPPORTED)}
    for what, (change, code) in bad.items():
        p, y, keep = host_params((2, 5, 16), **change)
        assert lib.vimdeploy_bi_selective_scan_cpu(ctypes.byref(p), 1) == code, what
        assert (y == 7.0).all(), what
    p, y, keep = host_params((0, 5, 16), x_fwd=None)
    assert lib.vimdeploy_bi_selective_scan_cpu(ctypes.byref(p), 1) == 0  # nothing to read: any pointers
    p, y, keep = host_params((2, 5, 16))
    assert lib.vimdeploy_bi_selective_scan_cpu(ctypes.byref(p), 1) == 0 and not (y == 7.0).any()
