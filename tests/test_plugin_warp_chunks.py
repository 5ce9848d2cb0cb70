"""The scan kernel's sequence-parallel path in one launch (VIMDEPLOY_SCAN_WARP_CHUNKS, variant 7;
forced only: the automatic choice does not take it, docs/kernel.md).

* CPU (runs everywhere): a NumPy fp64 model of warpChunksKernel's algorithm as the kernel indexes
  it (one block per chunk of a thread block cluster: chunk bounds incl. short and empty chunks, the
  chunk maps of the first pass, their composition in scan order, the meet in the middle inside a
  chunk), against the literal recurrence. It also checks the order of the partial outputs: every
  partial read in the second half was written in the first half by the other direction, and no
  element is written twice.
* GPU (marked `cuda`): the kernel against the fp64 ground truth of tests/test_plugin_cuda.py at
  every kind of L (1, 2, small primes, around powers of two, 197, 1025, 6085), batch 1 and 2,
  each chunk count forced, and the automatic choice (at batch 1 the split over two launches of
  variant 4, or 2 for L >= 2048: its output equals theirs bit for bit).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
N = 16
STATES, FIRST, SECOND = 0, 1, 2


def header_id(name: str) -> int:
    text = (REPO / "plugins/include/vimdeploy/bi_selective_scan.h").read_text()
    return int(re.search(rf"#define {name} (\d+)", text).group(1))


def test_python_names_the_header_id():
    pytest.importorskip("torch")
    from vimdeploy.ops.cuda import VARIANTS, WARP_CHUNKS

    assert WARP_CHUNKS == header_id("VIMDEPLOY_SCAN_WARP_CHUNKS") and WARP_CHUNKS in VARIANTS


MAX_CHUNKS = 16  # kMaxWarpChunks (a GPU that cannot schedule clusters of 16 takes 8)


def chunk_count(num_chunks: int, L: int) -> int:
    """launchWarpChunks' forced count: the largest power of two <= min(num_chunks, 16, L)."""
    nc = 1
    while 2 * nc <= MAX_CHUNKS and 2 * nc <= num_chunks and 2 * nc <= L:
        nc *= 2
    return nc


def softplus(v):
    return np.where(v <= 20, np.log1p(np.exp(np.minimum(v, 20))), v)


def silu(v):
    return v / (1 + np.exp(-v))


def random_case(L, E, seed):
    """Vim-like values, as tests/test_plugin_cuda.make_inputs draws them (NumPy, fp64)."""
    g = np.random.default_rng(seed)
    case = {"z": g.standard_normal((L, E)) * 1.5}
    for d in (0, 1):
        case[f"x{d}"] = silu(g.standard_normal((L, E)) * 1.5)
        case[f"dt{d}"] = g.standard_normal((L, E)) * 0.5
        case[f"B{d}"] = g.standard_normal((L, N))
        case[f"C{d}"] = g.standard_normal((L, N))
        case[f"A{d}"] = -np.exp(np.log(np.arange(1, N + 1)) + 0.3 * g.standard_normal((E, N)))
        case[f"D{d}"] = 1 + 0.2 * g.standard_normal(E)
        dt0 = np.exp(g.random(E) * (np.log(0.1) - np.log(0.001)) + np.log(0.001))
        case[f"bias{d}"] = dt0 + np.log(-np.expm1(-dt0))
    return case


def recurrence(case, scale):
    """The contract's op, token by token (fp64)."""
    L, E = case["z"].shape
    ys = []
    for d in (0, 1):
        delta = softplus(case[f"dt{d}"] + case[f"bias{d}"])
        h = np.zeros((E, N))
        y = np.empty((L, E))
        for t in range(L) if d == 0 else range(L - 1, -1, -1):
            h = (
                np.exp(delta[t][:, None] * case[f"A{d}"]) * h
                + (delta[t] * case[f"x{d}"][t])[:, None] * case[f"B{d}"][t]
            )
            y[t] = h @ case[f"C{d}"][t] + case[f"D{d}"] * case[f"x{d}"][t]
        ys.append(y)
    return (ys[0] + ys[1]) * silu(case["z"]) * scale


def store(y, phase, t, out, mode, case, scale):
    """A kernel's store at token t: the ungated partial (FIRST) or, in the SECOND half, the sum
    with the other direction's partial, gated; checks that the partial was written first, once."""
    if mode == SECOND:
        assert phase[t] == 1, "a partial read before it was written"
        out = (out + y[t]) * (silu(case["z"][t]) * scale)
        phase[t] = 2
    else:
        assert phase[t] == 0, "a partial written twice"
        phase[t] = 1
    y[t] = out


def warp_chunks(case, scale, nc):
    """warpChunksKernel for one batch row, every channel at once: block (cluster rank) c = chunk c,
    warp d = direction d."""
    L, E = case["z"].shape
    ln = -(-L // nc)  # p.chunk_len
    y = np.full((L, E), np.nan)
    phase = np.zeros(L, dtype=int)  # 1: partial written, 2: final written

    def tokens(d, c):
        """Chunk c's tokens in scan order (none for an empty chunk)."""
        t0 = min(c * ln, L)
        t1 = min(t0 + ln, L)
        return list(range(t0, t1)) if d == 0 else list(range(t1 - 1, t0 - 1, -1))

    def sweep(d, h, dsum, ts, mode):
        A, bias = case[f"A{d}"], case[f"bias{d}"]
        for t in ts:
            xv = case[f"x{d}"][t]
            dl = softplus(case[f"dt{d}"][t] + bias)
            h = np.exp(dl[:, None] * A) * h + (dl * xv)[:, None] * case[f"B{d}"][t]
            dsum = dsum + dl
            if mode == STATES:
                continue
            store(y, phase, t, h @ case[f"C{d}"][t] + case[f"D{d}"] * xv, mode, case, scale)
        return h, dsum

    maps = {}  # (d, c) -> (state, sum of deltas); the last chunk in scan order has none
    for d in (0, 1):
        for c in range(nc):
            if nc > 1 and c != (nc - 1 if d == 0 else 0):
                maps[d, c] = sweep(d, np.zeros((E, N)), np.zeros(E), tokens(d, c), STATES)
    starts = {}
    for d in (0, 1):
        A = case[f"A{d}"]
        for c in range(nc):  # after the cluster barrier: compose the maps before c in scan order
            h = np.zeros((E, N))
            for j in range(c if d == 0 else nc - 1 - c):
                state, dsum = maps[d, j if d == 0 else nc - 1 - j]
                h = np.exp(A * dsum[:, None]) * h + state
            starts[d, c] = h
    for c in range(nc):  # one block: forward the chunk's first n // 2 tokens, backward the rest
        ts = [tokens(0, c), tokens(1, c)]
        n = len(ts[0])
        splits = [n // 2, n - n // 2]
        hs = [sweep(d, starts[d, c], np.zeros(E), ts[d][: splits[d]], FIRST)[0] for d in (0, 1)]
        for d in (0, 1):  # after __syncthreads
            sweep(d, hs[d], np.zeros(E), ts[d][splits[d] :], SECOND)
    assert (phase == 2).all(), "an output never written"
    return y


@pytest.mark.parametrize("L", [1, 2, 3, 5, 7, 8, 9, 13, 31, 32, 33, 63, 65, 197, 1025])
@pytest.mark.parametrize("num_chunks", [1, 2, 3, 4, 8, 16, 32])
def test_emulated_warp_chunks_match_the_recurrence(L, num_chunks):
    case = random_case(L, 3, seed=L * 131 + num_chunks)
    want = recurrence(case, 0.5)
    got = warp_chunks(case, 0.5, chunk_count(num_chunks, L))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())


# --------------------------------------------------------------------------- GPU

LS = [1, 2, 3, 5, 7, 13, 31, 33, 64, 65, 127, 197, 1025, 2049, 6085]


def _gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is false)")
    return torch


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("L", LS)
def test_kernel_warp_chunks_every_L(cuda_kernels, L, b, dtype):
    """Forced chunk counts (1, 2, 4, 8, 16, its automatic count) and the automatic variant, against fp64;
    E = 384 (Vim-Ti) at batch 1, 37 (partial channel tiles) at batch 2."""
    torch = _gpu()
    from tests.test_plugin_cuda import check, ground_truth, make_inputs
    from vimdeploy.ops.cuda import WARP_CHUNKS, bi_selective_scan_cuda, launch

    E = 384 if b == 1 else 37
    dt = getattr(torch, dtype)
    args = make_inputs(b, L, E, dt, seed=L * 5 + b)
    truth = ground_truth(args, True, 0.5)
    forced = {}
    for num_chunks in (0, 1, 2, 4, 8, 16):
        out = torch.full((b, L, E), float("nan"), dtype=dt, device="cuda")
        launch(out, args, delta_softplus=True, out_scale=0.5, num_chunks=num_chunks, variant=WARP_CHUNKS)
        check(out, args, what=f"warp chunks {num_chunks} L={L} b={b}", truth=truth)
        forced[num_chunks] = out
    auto = bi_selective_scan_cuda(args, delta_softplus=True, out_scale=0.5)
    check(auto, args, what=f"automatic L={L} b={b}", truth=truth)
    if b == 1 and L >= 32:  # the automatic choice at batch 1: the split over two launches
        split = launch(torch.empty_like(auto), args, delta_softplus=True, out_scale=0.5, variant=2 if L >= 2048 else 4)
        assert torch.equal(auto, split)


@pytest.mark.cuda
@pytest.mark.parametrize("sms", ["16", "132", "1000"])
def test_kernel_warp_chunks_any_sm_count(cuda_kernels, monkeypatch, sms):
    """The automatic chunk count follows the SM count (VIMDEPLOY_SM_COUNT): each is correct."""
    torch = _gpu()
    from tests.test_plugin_cuda import check, make_inputs
    from vimdeploy.ops.cuda import bi_selective_scan_cuda

    monkeypatch.setenv("VIMDEPLOY_SM_COUNT", sms)
    for b, L, E in ((1, 197, 384), (4, 730, 768), (1, 6085, 192)):
        args = make_inputs(b, L, E, torch.float16, seed=b + L)
        check(
            bi_selective_scan_cuda(args, delta_softplus=True, out_scale=1.0),
            args,
            True,
            1.0,
            what=f"{sms} SMs b={b} L={L}",
        )
