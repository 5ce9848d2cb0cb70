"""The op contract written once per language: vimdeploy/contract.py (Python) and the C headers of
plugins/include/vimdeploy/ must state the same facts. Each test reads the header text, so it
fails when either side changes alone."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from vimdeploy import contract

INCLUDE = Path(__file__).resolve().parents[1] / "plugins" / "include" / "vimdeploy"


def defines(header: str) -> dict[str, str]:
    """#define NAME VALUE of a header, continuation lines joined, comments dropped."""
    text = (INCLUDE / header).read_text().replace("\\\n", " ")
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s*#define\s+(\w+)[ \t]+(.+)$", text, re.M)}


def c_string(value: str) -> str:
    m = re.fullmatch(r'"([^"]*)"', value)
    assert m, f"not a C string literal: {value}"
    return m.group(1)


def c_float(value: str) -> float:
    return float(value.rstrip("fF"))


PARAMS = defines("scan_params.h")


def test_op_name_version_namespace():
    assert c_string(PARAMS["VIMDEPLOY_SCAN_DOMAIN"]) == contract.DOMAIN
    assert c_string(PARAMS["VIMDEPLOY_SCAN_OP_TYPE"]) == contract.OP_TYPE
    assert c_string(PARAMS["VIMDEPLOY_SCAN_PLUGIN_VERSION"]) == contract.PLUGIN_VERSION
    assert c_string(PARAMS["VIMDEPLOY_SCAN_PLUGIN_NAMESPACE"]) == contract.PLUGIN_NAMESPACE


def test_sizes_and_defaults():
    assert int(PARAMS["VIMDEPLOY_SCAN_D_STATE"]) == contract.D_STATE
    assert int(PARAMS["VIMDEPLOY_SCAN_NUM_INPUTS"]) == contract.NUM_INPUTS
    assert bool(int(PARAMS["VIMDEPLOY_SCAN_DEFAULT_DELTA_SOFTPLUS"])) == contract.DEFAULT_DELTA_SOFTPLUS
    assert c_float(PARAMS["VIMDEPLOY_SCAN_DEFAULT_OUT_SCALE"]) == contract.DEFAULT_OUT_SCALE


def test_dtype_codes():
    codes = {
        name[len("VIMDEPLOY_DTYPE_") :].lower(): int(v)
        for name, v in PARAMS.items()
        if name.startswith("VIMDEPLOY_DTYPE_")
    }
    assert codes == contract.DTYPES


def test_struct_inputs_are_the_contract_inputs_in_order():
    text = (INCLUDE / "scan_params.h").read_text()
    body = re.search(r"typedef struct VimdeployScanParams\s*\{(.*?)\}\s*VimdeployScanParams;", text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = re.findall(r"^\s*([\w\s\*]+?)\s*\b(\w+);", body, re.M)
    inputs = [name for ctype, name in fields if ctype.replace(" ", "") == "voidconst*"]
    assert tuple(inputs) == contract.INPUT_NAMES
    # the inputs head the struct (the plugin copies TensorRT's input array onto them), y follows
    assert [name for _, name in fields[: len(inputs) + 1]] == [*contract.INPUT_NAMES, "y"]
    names = re.findall(r'"(\w+)"', PARAMS["VIMDEPLOY_SCAN_INPUT_NAMES"])
    assert tuple(names) == contract.INPUT_NAMES


def test_scan_variant_ids_are_the_ones_python_forces():
    pytest.importorskip("torch")
    from vimdeploy.ops.cuda import VARIANTS

    api = defines("bi_selective_scan.h")
    ids = {
        name: int(v.split()[0])
        for name, v in api.items()
        if re.fullmatch(r"VIMDEPLOY_SCAN_(STEPS\d+_THREADS\d|WARP_CHUNKS|STATE_LANES)", name)
    }
    assert int(api["VIMDEPLOY_SCAN_AUTO"]) == 0
    assert sorted(ids.values()) == list(VARIANTS) == list(range(1, int(api["VIMDEPLOY_SCAN_NUM_VARIANTS"])))


def test_shared_softplus_fit_is_log1p():
    """The coefficients both kernels read: q(w) * w must be log1p(w) on (0, 1] to the
    header's stated rel. error 2.5e-7 (evaluated here in fp64, the fit's own error)."""
    numeric = defines("scan_numeric.h")
    coeffs = [c_float(c) for c in numeric["VIMDEPLOY_SOFTPLUS_LOG1P_COEFFS"].split(",")]
    assert len(coeffs) == int(numeric["VIMDEPLOY_SOFTPLUS_LOG1P_DEGREE"]) + 1
    w = np.linspace(0.0, 1.0, 100_001)[1:]
    q = np.full_like(w, np.float32(coeffs[0]))
    for c in coeffs[1:]:
        q = q * w + np.float32(c)
    assert np.max(np.abs(q * w / np.log1p(w) - 1)) < 2.5e-7
    assert c_float(numeric["VIMDEPLOY_LOG2E"]) == pytest.approx(1 / np.log(2), rel=1e-15)
