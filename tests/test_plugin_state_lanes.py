"""The scan kernel's state-lanes path (VIMDEPLOY_SCAN_STATE_LANES, variant 8: a channel's 16 states
on 16 lanes, for grids too small to fill the GPU with one thread per channel).

* CPU (runs everywhere): a NumPy fp64 model of stateLanesKernel as the kernel indexes it (chunks of
  16 steps, each lane's own step with its delta zeroed past the end, the clamped tokens of a last
  partial chunk, the butterfly reduce-scatter lane by lane, the meet in the middle), against the
  literal recurrence; it also checks that every partial read in the second half was written in the
  first half by the other direction, and that no element is written twice.
* GPU (marked `cuda`): the kernel against the fp64 ground truth of tests/test_plugin_cuda.py at every
  kind of L, batch 1 and 2, with and without the softplus in the op.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_plugin_warp_chunks import (
    FIRST,
    LS,
    SECOND,
    _gpu,
    header_id,
    random_case,
    recurrence,
    softplus,
    store,
)

N = 16
LANES = 16  # kLanesTC: steps per chunk, one per lane of a channel


def test_python_names_the_header_id():
    pytest.importorskip("torch")
    from vimdeploy.ops.cuda import STATE_LANES, VARIANTS

    assert STATE_LANES == header_id("VIMDEPLOY_SCAN_STATE_LANES") and STATE_LANES in VARIANTS


def reduce_scatter(lanes):
    """The kernel's reduceHalves<8>, <4>, <2>, <1>: lanes[j] is lane j's list of 16 sums (one per
    step); each stage keeps the half its bit selects plus the partner's copy of that half."""
    for m in (8, 4, 2, 1):
        nxt = []
        for j in range(LANES):
            p = j ^ m
            up, p_up = bool(j & m), bool(p & m)
            # partner sends `upper ? acc[i] : acc[i + m]` from its own point of view
            nxt.append(
                [
                    (lanes[j][i + m] if up else lanes[j][i]) + (lanes[p][i] if p_up else lanes[p][i + m])
                    for i in range(m)
                ]
            )
        lanes = nxt
    return [v[0] for v in lanes]


def state_lanes(case, scale, delta_softplus=True):
    """stateLanesKernel for one batch row, every channel at once (warp d = direction d)."""
    L, E = case["z"].shape
    y = np.full((L, E), np.nan)
    phase = np.zeros(L, dtype=int)  # 1: partial written, 2: final written

    def sweep(d, h, s0, s1, mode):
        A, bias, x = case[f"A{d}"], case[f"bias{d}"], case[f"x{d}"]

        def token(s):
            c = min(s, s1 - 1)
            return c if d == 0 else L - 1 - c

        for s in range(s0, s1, LANES):
            own = [s + j < s1 for j in range(LANES)]
            t_own = [token(s + j) for j in range(LANES)]
            v = [case[f"dt{d}"][t] + bias for t in t_own]
            dl = [(softplus(v[j]) if delta_softplus else v[j]) if own[j] else np.zeros(E) for j in range(LANES)]
            dx = [dl[j] * x[t_own[j]] for j in range(LANES)]
            acc = []  # acc[i]: (E, N), lane j's C h of step i in column j
            for i in range(LANES):  # lane j reads step i's delta from lane i by a shuffle
                t = token(s + i)
                h = np.exp(dl[i][:, None] * A) * h + dx[i][:, None] * case[f"B{d}"][t]
                acc.append(h * case[f"C{d}"][t])
            sums = reduce_scatter([[acc[i][:, j] for i in range(LANES)] for j in range(LANES)])
            for j in range(LANES):
                if not own[j]:
                    continue
                t = t_own[j]
                store(y, phase, t, sums[j] + case[f"D{d}"] * x[t], mode, case, scale)
        return h

    splits = [L // 2, L - L // 2]
    hs = [sweep(d, np.zeros((E, N)), 0, splits[d], FIRST) for d in (0, 1)]
    for d in (0, 1):  # after __syncthreads
        sweep(d, hs[d], splits[d], L, SECOND)
    assert (phase == 2).all(), "an output never written"
    return y


def test_reduce_scatter_leaves_step_j_in_lane_j():
    g = np.random.default_rng(0)
    acc = g.standard_normal((LANES, LANES))  # acc[j][i]: lane j's sum of step i
    np.testing.assert_allclose(reduce_scatter([list(row) for row in acc]), acc.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("L", [1, 2, 3, 15, 16, 17, 31, 32, 33, 47, 64, 65, 197])
@pytest.mark.parametrize("delta_softplus", [True, False])
def test_emulated_state_lanes_match_the_recurrence(L, delta_softplus):
    case = random_case(L, 3, seed=L * 17 + delta_softplus)
    want = recurrence(case, 0.5)
    if not delta_softplus:  # the op is handed delta - bias; it adds the bias and no softplus
        case = dict(case)
        for d in (0, 1):
            case[f"dt{d}"] = softplus(case[f"dt{d}"] + case[f"bias{d}"]) - case[f"bias{d}"]
    got = state_lanes(case, 0.5, delta_softplus)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())


# --------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.parametrize("delta_softplus", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("L", LS)
def test_kernel_state_lanes_every_L(cuda_kernels, L, b, dtype, delta_softplus):
    """Forced variant 8 against fp64; E = 384 (Vim-Ti) at batch 1, 37 (an odd channel count: the
    last block's second channel is inactive) at batch 2; the output starts as NaN."""
    torch = _gpu()
    from tests.test_plugin_cuda import activations_as, check, make_inputs
    from vimdeploy.ops.cuda import STATE_LANES, launch

    E = 384 if b == 1 else 37
    dt = getattr(torch, dtype)
    args = activations_as(make_inputs(b, L, E, torch.float32, seed=L * 3 + b), dt, delta_softplus)
    out = torch.full((b, L, E), float("nan"), dtype=dt, device="cuda")
    launch(out, args, delta_softplus=delta_softplus, out_scale=0.5, variant=STATE_LANES)
    check(out, args, delta_softplus, 0.5, what=f"state lanes L={L} b={b} {dtype}")
