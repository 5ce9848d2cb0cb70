"""What `validate` accepts: one table of tolerances per precision and kind of input.

Two kinds of input set: "random" (seeded normal tensors: every path runs, far from the
image statistics a quantized model was calibrated on) and "images" (photos, `--data DIR`,
the calibration set: what a deployed model sees). Every bound applies to every output
(logits, features, feature maps); `top_k` to the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..errors import InputError

RANDOM, IMAGES = "random", "images"


@dataclass(frozen=True)
class Tolerance:
    """Bounds on one output of one input set; None = not checked."""

    atol: float | None = None  # with rtol: every element within atol + rtol * |reference| (Polygraphy's
    rtol: float | None = None  # simple comparator; an element passes on either bound)
    cosine: float | None = None  # the smallest per-input cosine similarity
    top_k: int | None = None  # logits: every input's top-k classes the same set as the reference's


def _both(t: Tolerance) -> dict[str, Tolerance]:
    return {RANDOM: t, IMAGES: t}


# Ordered from the strictest to the loosest: comparing two artifacts uses the looser one's row.
# Where the values come from (this project's 2-core CPU machine, ONNX Runtime; cosine = the
# smallest of any input):
# - fp32 computes what PyTorch computes in another order: the golden Vim-Ti's logits differ by
#   ~5e-7 and its features by ~1.4e-6 (`validate vim_t_p16_seed30.pth --ref
#   vim_t_p16_seed30.expected.npz`), while real mistakes (a missing branch, the divide-by-2)
#   differ by ~0.4.
# - fp16 rounds every activation: cosine 0.9999996 for the digits model's fp16 export
#   (`convert --precision fp16`, then `validate --ref vimdeploy/assets/vim_digits.pth`).
# - int8 and fp8: `python benchmarks/bench_accuracy.py` (benchmarks/results/accuracy.md; Q/DQ run
#   as written in ONNX Runtime, i.e. TensorRT's arithmetic emulated in fp32). The digits model's
#   INT8 export (default recipe: max calibration, out_proj kept float) gives the smallest cosine
#   0.9997 on 450 held-out digits and 0.9876 on 32 random inputs; the golden Vim-Ti 0.9998 / 0.9997.
#   FP8 (E4M3, every GEMM): digits 0.9964 held-out, 0.9698 random; golden 0.9975 / 0.9977.
#   Random inputs are far from what a quantized model was calibrated for: they get the looser row.
TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "fp32": _both(Tolerance(atol=1e-4, cosine=0.99999, top_k=1)),
    "fp16": _both(Tolerance(cosine=0.9999, top_k=1)),
    "int8": {RANDOM: Tolerance(cosine=0.98), IMAGES: Tolerance(cosine=0.99)},
    "fp8": {RANDOM: Tolerance(cosine=0.95), IMAGES: Tolerance(cosine=0.99)},
}


def set_kind(name: str) -> str:
    """The tolerance row of an input set: random tensors, or images."""
    return RANDOM if name in (RANDOM, "saved") else IMAGES


def looser(a: str, b: str) -> str:
    """Of two precisions, the one whose tolerances are looser."""
    for p in (a, b):
        if p not in TOLERANCES:
            raise InputError(f"no tolerances for precision {p!r} (known: {', '.join(TOLERANCES)}): pass --precision.")
    order = list(TOLERANCES)
    return max(a, b, key=order.index)


def tolerances(precision: str, **overrides) -> dict[str, Tolerance]:
    """The table's row for `precision`, with the given bounds (atol, rtol, cosine, top_k) replacing its own."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(Tolerance)}
    if unknown:
        raise TypeError(f"unknown tolerance(s): {', '.join(sorted(unknown))}")
    return {kind: replace(t, **given) for kind, t in TOLERANCES[precision].items()}
