"""mypy over vimdeploy/tensorrt against TensorRT's type stubs: a misspelled TensorRT API fails CI.

The stubs are PyPI's `tensorrt-stubs` (10.13, installed by `make setup` with --no-deps: its
declared dependency is the `tensorrt` download stub, which cannot install offline). As
published they do not load in mypy: no py.typed next to `tensorrt/`, and a few generated
signatures are not valid Python (a parameter named `in`, non-default parameters after
defaults). `typed_stubs` copies them into a folder on MYPYPATH with those lines repaired.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _split_params(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur] if cur.strip() else parts


def _repair(line: str) -> str:
    """One generated `def` line that is not valid Python, made valid with the same names and types."""
    m = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*:\s*)$", line)
    if not m:
        return line
    params, seen_default = [], False
    for p in _split_params(m.group(2)):
        p = re.sub(r"^(\s*)in:", r"\1in_:", p)
        if "=" in p:
            seen_default = True
        elif seen_default and not p.strip().startswith("*"):
            p += " = ..."
        params.append(p)
    return m.group(1) + ",".join(params) + m.group(3)


def _valid(line: str) -> bool:
    try:
        ast.parse(line.strip() + " ...")
        return True
    except SyntaxError:
        return False


@pytest.fixture(scope="module")
def typed_stubs(tmp_path_factory) -> Path:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (make setup installs it: pip install --no-deps tensorrt-stubs)")
    out = tmp_path_factory.mktemp("stubs")
    for f in dist.files or []:
        if f.suffix == ".pyi" and f.parts[0] in ("tensorrt", "tensorrt_bindings"):
            target = out / Path(*f.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            lines = Path(f.locate()).read_text().splitlines()
            target.write_text(
                "\n".join(ln if not ln.lstrip().startswith("def ") or _valid(ln) else _repair(ln) for ln in lines)
                + "\n"
            )
    (out / "tensorrt_libs.pyi").write_text("")  # imported by the stubs' __init__, not part of them
    assert (out / "tensorrt" / "__init__.pyi").is_file()
    return out


def _mypy(stubs: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MYPYPATH": str(stubs)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(stubs.parent / "mypy-cache"),
            "vimdeploy/tensorrt",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_tensorrt_package_typechecks(typed_stubs):
    r = _mypy(typed_stubs, REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_misspelled_tensorrt_call_fails_the_check(typed_stubs, tmp_path):
    """The check has teeth: the same code with one TensorRT method misspelled is refused."""
    shutil.copytree(REPO / "vimdeploy", tmp_path / "vimdeploy", ignore=shutil.ignore_patterns("__pycache__", "*.pth"))
    builder = tmp_path / "vimdeploy" / "tensorrt" / "builder.py"
    text = builder.read_text()
    assert "config.set_memory_pool_limit(" in text
    builder.write_text(text.replace("config.set_memory_pool_limit(", "config.set_memory_pool_limt(", 1))
    r = _mypy(typed_stubs, tmp_path)
    assert r.returncode == 1 and "set_memory_pool_limt" in r.stdout, r.stdout + r.stderr
