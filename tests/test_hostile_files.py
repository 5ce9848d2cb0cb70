"""Failures a user can act on are one `error:` line and exit 1, with nothing left at the target.

Each case runs the command in its own process, as a user does: OS errors on writes (EACCES:
/sys refuses even root; ENOTDIR; EFBIG from a file-size limit the kernel enforces; ENOSPC
from a patched `open`), and malformed ONNX (truncated, garbage bytes, external data outside
its folder) in every command that reads one.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from vimdeploy.export import export_onnx

from .conftest import small_model

# Runs the CLI with every open() for writing under $VIMDEPLOY_TEST_FULL failing as a full disk does.
FULL_DISK = """
import builtins, errno, os, sys
real_open, full = builtins.open, os.environ["VIMDEPLOY_TEST_FULL"]

def open_on_full_disk(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and os.path.abspath(str(file)).startswith(full):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
    return real_open(file, mode, *args, **kwargs)

builtins.open = open_on_full_disk
from vimdeploy.cli import main
main(sys.argv[1:], prog_name="vimdeploy")
"""


def run(*args, full_disk=None, max_file_bytes=None):
    """`vimdeploy ARGS` in a new process: (exit status, stderr)."""
    env = dict(os.environ)
    command = [sys.executable, "-m", "vimdeploy"]
    if full_disk is not None:
        env["VIMDEPLOY_TEST_FULL"] = str(full_disk)
        command = [sys.executable, "-c", FULL_DISK]

    def limit():  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    proc = subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=limit if max_file_bytes else None,
    )
    return proc.returncode, proc.stderr


def assert_one_error(result, *needles):
    """Exit 1, one `error:` line (the last; progress lines may come before it), no traceback."""
    code, stderr = result
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 1 and errors == lines[-1:] and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in errors[0], stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    torch.save({"model": small_model(seed=5).state_dict()}, d / "small.pth")
    export_onnx(d / "small.pth", d / "model.onnx", batch="dynamic")
    data = (d / "model.onnx").read_bytes()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (d / "garbage.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "empty.onnx").write_bytes(b"")
    # One weight moved to external data at ../outside.bin: outside the model's folder.
    (d / "sub").mkdir()
    (d / "outside.bin").write_bytes(bytes(1 << 20))
    model = onnx.load(d / "model.onnx")
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    size = len(weight.raw_data)
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", str(size))):
        weight.external_data.add(key=key, value=value)
    (d / "sub" / "escaping.onnx").write_bytes(model.SerializeToString())
    np.save(d / "batch.npy", np.zeros((1, 3, 224, 224), np.float32))
    return d


BAD_ONNX = ["truncated.onnx", "garbage.onnx", "empty.onnx", "sub/escaping.onnx"]


@pytest.mark.parametrize("name", BAD_ONNX)
def test_malformed_onnx_in_every_command_that_reads_one(files, tmp_path, name):
    bad = files / name
    out = tmp_path / "out"
    out.mkdir()
    for args in (
        ["inspect", bad],
        ["infer", bad, "--input", files / "batch.npy", "-o", out / "o.npz"],
        ["validate", bad, "--ref", files / "small.pth", "--batch", "1"],
        ["convert", bad, "-o", out / "c.onnx", "--precision", "fp16"],
    ):
        assert_one_error(run(*args), str(bad))
    # build checks for TensorRT first: without it, its (multi-line) install hint is the error;
    # with it, the ONNX's (test_malformed_onnx_before_the_tensorrt_build)
    code, stderr = run("build", bad, "-o", out / "e.plan")
    assert code == 1 and stderr.startswith("error:") and "Traceback" not in stderr, stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", BAD_ONNX)
def test_malformed_onnx_before_the_tensorrt_build(files, name):
    """What `build` reads first once TensorRT is there (vimdeploy.tensorrt.builder.onnx_summary)."""
    from vimdeploy.errors import ArtifactError
    from vimdeploy.tensorrt.builder import onnx_summary

    with pytest.raises(ArtifactError, match=str(files / name)):
        onnx_summary(files / name)


def test_escaping_external_data_names_the_location(files):
    assert_one_error(run("inspect", files / "sub" / "escaping.onnx"), "outside the model's folder")


@pytest.mark.parametrize("target", ["/sys/vimdeploy-out", "file/below"])
def test_unwritable_output_folder(files, tmp_path, target):
    """EACCES (/sys refuses new files even to root) and a folder below a file (ENOTDIR)."""
    (tmp_path / "file").write_text("x")
    folder = target if target.startswith("/") else tmp_path / target
    assert_one_error(run("infer", files / "small.pth", "--input", files / "batch.npy", "-o", f"{folder}/o.npz"))
    assert_one_error(run("convert", files / "model.onnx", "-o", f"{folder}/c.onnx", "--precision", "fp16"))
    assert_one_error(run("export", files / "small.pth", "-o", f"{folder}/e.onnx", "--precision", "fp16"))
    assert (tmp_path / "file").read_text() == "x"


def test_full_disk_during_infer_leaves_nothing(files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = run("infer", files / "model.onnx", "--input", files / "batch.npy", "-o", out / "o.npz", full_disk=out)
    assert_one_error(result, "No space left on device", str(out / "o.npz"))
    assert list(out.iterdir()) == []


def test_full_disk_during_export_leaves_nothing(files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = run("export", files / "small.pth", "-o", out / "m.onnx", full_disk=out)
    assert_one_error(result, "No space left on device", str(out / "m.onnx"))
    assert list(out.iterdir()) == []


def test_file_size_limit_during_convert_leaves_nothing(files, tmp_path):
    """A real failing write (EFBIG past RLIMIT_FSIZE) half-way through the ONNX."""
    out = tmp_path / "out"
    out.mkdir()
    result = run("convert", files / "model.onnx", "-o", out / "c.onnx", "--precision", "fp16", max_file_bytes=64 << 10)
    assert_one_error(result, "File too large", str(out / "c.onnx"))
    assert list(out.iterdir()) == []
