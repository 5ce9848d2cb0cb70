"""`vimdeploy bench` logic on the CPU: batch search, rows/JSON/table shape, CLI errors."""

import json
import time

import pytest
import torch

from vimdeploy import bench


class FakeRunner(bench.Runner):
    """CPU runner whose calls 'run out of memory' above `fits` images and sleep `delay` s."""

    def __init__(self, name="fake", fits=8, delay=0.0, oom_exc=torch.cuda.OutOfMemoryError):
        super().__init__(name=name, device="cpu", timer="wall")
        self.fits, self.delay, self.oom_exc = fits, delay, oom_exc
        self.prepared = []

    def prepare(self, size, batch):
        self.prepared.append((size, batch))
        if batch > self.fits:
            raise self.oom_exc("CUDA out of memory. Tried to allocate 2.00 GiB")
        return lambda: time.sleep(self.delay)


def test_snap_size_to_the_patch_grid():
    assert bench.snap_size(738) == 736
    assert [bench.snap_size(s) for s in (224, 512, 1024, 1248)] == [224, 512, 1024, 1248]
    assert bench.snap_size(8) == 16
    assert bench.snap_size(740, patch=16, stride=8) == 744  # ties go up


def test_find_max_batch_halves_on_oom():
    seen = []

    def try_batch(b):
        seen.append(b)
        if b > 20:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return {"batch": b}

    oom_calls = []
    b, row, tried = bench.find_max_batch(try_batch, 128, on_oom=lambda: oom_calls.append(1))
    assert (b, row) == (16, {"batch": 16})
    assert seen == [128, 64, 32, 16]
    assert tried == [(128, "oom"), (64, "oom"), (32, "oom"), (16, "ok")]
    assert len(oom_calls) == 3


def test_find_max_batch_nothing_fits_and_other_errors_propagate():
    def oom(b):
        raise RuntimeError("CUDA error: out of memory")

    assert bench.find_max_batch(oom, 4)[:2] == (None, None)

    def broken(b):
        raise ValueError("not an OOM")

    with pytest.raises(ValueError):
        bench.find_max_batch(broken, 4)


def test_run_bench_rows_json_and_table():
    r = FakeRunner(fits=8)
    res = bench.run_bench(
        [r], [224, 738], batches=[1, 16], max_batch=32, warmup=1, iters=3, seconds=0.0, progress=False
    )
    rows = res["rows"]
    assert len(rows) == 2 * 3
    json.loads(json.dumps(res))  # JSON-ready
    first = rows[0]
    assert first["status"] == "ok" and first["batch"] == 1 and first["batch_mode"] == "fixed"
    for key in ("throughput_img_s", "p50_ms", "p99_ms", "median_ms", "iters", "tokens", "size", "requested_size"):
        assert key in first
    assert first["tokens"] == 197
    assert rows[1]["status"] == "oom" and rows[1]["batch"] == 16
    mx = rows[2]
    assert mx["batch_mode"] == "max" and mx["status"] == "ok" and mx["batch"] == 8
    assert mx["tried"] == [(32, "oom"), (16, "oom"), (8, "ok")]
    assert rows[3]["size"] == 736 and rows[3]["requested_size"] == 738 and "patch grid" in rows[3]["note"]
    table = bench.format_table(res)
    assert len(table.splitlines()) == 2 + len(rows)
    assert "736 (asked 738)" in table and "8 (max)" in table


def test_too_slow_skips_larger_sizes():
    r = FakeRunner(delay=0.05)
    res = bench.run_bench(
        [r], [224, 512], batches=[1], warmup=1, iters=2, seconds=0.0, max_forward_s=0.01, progress=False
    )
    assert [row["status"] for row in res["rows"]] == ["too_slow", "skipped"]
    assert res["rows"][0]["est_ms"] >= 40
    assert "too slow" in bench.format_table(res)


def test_plot_writes_both_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    res = bench.run_bench(
        [FakeRunner(name="a"), FakeRunner(name="b", fits=2)],
        [224, 512],
        batches=[1],
        max_batch=4,
        warmup=1,
        iters=2,
        seconds=0.0,
        progress=False,
    )
    for row in res["rows"]:  # pretend GPU memory was measured
        row.setdefault("peak_mem_mib", 100.0 * row["size"] / 224)
    paths = bench.plot(res, tmp_path)
    assert [p.name for p in paths] == ["bench_throughput.png", "bench_memory.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_cli_errors_without_cuda(cli, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = cli("bench", "--model", "vim_tiny", "--sizes", "224", "--device", "cuda")
    assert res.exit_code == 1
    assert "no CUDA GPU" in res.output and "--device cpu" in res.output
    res = cli("bench", "--model", "vim_tiny", "--scan", "cuda", "--device", "cpu")
    assert res.exit_code == 1 and "does not run on the CPU" in res.output
    res = cli("bench", "--device", "cpu")
    assert res.exit_code == 1 and "--model vim_tiny" in res.output


def test_cli_cpu_run_writes_json(cli, tmp_path, monkeypatch):
    from vimdeploy.model import VARIANTS

    monkeypatch.setitem(VARIANTS, "tiny", VARIANTS["tiny"].replace(depth=2))  # same code path, CI-fast
    out = tmp_path / "b.json"
    res = cli(
        "bench",
        "--model",
        "vim_tiny",
        "--device",
        "cpu",
        "--sizes",
        "32",
        "--batch",
        "1",
        "--warmup",
        "1",
        "--iters",
        "1",
        "--seconds",
        "0",
        "--json-out",
        out,
    )
    assert res.exit_code == 0, res.output
    # the CPU default is scan "auto" (the native CPU kernel when built, else the fast scan)
    assert "| Vim-Ti (auto scan) | 32 (5) | 1 | ok |" in res.output
    data = json.loads(out.read_text())
    assert set(data) >= {"env", "settings", "runners", "rows"}
    assert data["rows"][0]["status"] == "ok" and data["runners"][0]["scan"] == "auto"
    assert data["runners"][0]["dtype"] == "fp32"


def test_categorize_kernel_names():
    from vimdeploy.bench import categorize

    assert categorize("void (anonymous namespace)::biScanKernel<__half, 8, 2, false>(Params)") == "scan kernel"
    assert categorize("nvjet_sm90_hsh_192x192_64x4_1x2_h_bz_coopB_TNN") == "GEMM (linear)"
    assert categorize("void (anonymous namespace)::deltaKernel<1>(Args)") == "delta (dt_proj + softplus)"
    assert categorize("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0") == "add + RMSNorm"
    assert (
        categorize("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>")
        == "copies / transposes / cat"
    )
    assert (
        categorize("void (anonymous namespace)::convSiluXProj<6>((anonymous namespace)::Args)")
        == "conv + SiLU + x_proj (one kernel)"
    )
    assert (
        categorize("void (anonymous namespace)::convSiluAsync<__half, 8, 4, 32>(Args)")
        == "conv (patch embed, depthwise 1-D)"
    )
    # Inductor's kernels around the opaque ops carry the ops' names but are element-wise work
    assert categorize("triton_poi_fused__unsafe_view_bi_selective_scan_cuda_exp_neg_new_zeros_slice_3") != "scan kernel"
    assert (
        categorize("triton_poi_fused__unsafe_view_cat_constant_pad_nd_conv_silu_xproj_bidir_split_with_sizes_2")
        == "copies / transposes / cat"
    )
    assert categorize("some_unknown_kernel") == "other"


def test_frozen_compile_folds_the_weights_and_follows_a_new_position_embedding():
    """`compiled(freeze=True)` (bench_layout.py --freeze, bench_e2e_edge.py): Inductor folds the
    parameters into constants. Its output equals the eager model's; an in-place change of every
    A_log after the first call does not reach it (the eager model follows it; freezing given as
    torch.compile's `options` froze nothing, and the output followed); and when the bench's
    per-size hook swaps in a new position-embedding Parameter the frozen model recompiles,
    reading the current weights, instead of serving the old constants (CPU Inductor here; the GPU
    timing is the benchmark's)."""
    from vimdeploy.bench.models import compiled

    from .conftest import small_model

    model = small_model().eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        frozen = compiled(model, True, freeze=True)
        first = frozen(x)
        torch.testing.assert_close(first, model(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for layer in model.layers:
            layer.mixer.A_log.add_(1.0)
            layer.mixer.A_b_log.add_(1.0)
    with torch.inference_mode():
        assert (model(x) - first).abs().max() > 1e-3  # the change matters
        torch.testing.assert_close(frozen(x), first, rtol=0, atol=0)
        model.pos_embed = torch.nn.Parameter(model.pos_embed.detach() + 0.5, requires_grad=False)
        want = model(x)
        assert (want - first).abs().max() > 0.1  # the new embedding matters
        torch.testing.assert_close(frozen(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(bench.BenchError, match="default mode"):
        compiled(model, "max-autotune-no-cudagraphs", freeze=True)
