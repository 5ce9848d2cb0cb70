"""One input set's outputs, artifact against reference: Polygraphy's comparators per input.

Each input row is one Polygraphy iteration (`IterationResult`), so that every statistic is
per input: `SimpleCompareFunc` checks atol / rtol element-wise (an element passes within
either bound, rtol relative to the reference) and gives the max / mean errors,
`CosineSimilarityCompareFunc` the cosine similarity of each input's output. The runners are
not Polygraphy's: `vimdeploy.runtime`'s engines already run every artifact kind (the scan op
registered with ONNX Runtime, the TensorRT plugin, checkpoints through PyTorch) and saved
outputs need no runner; their outputs go into a `RunResults`. Top-k agreement is computed
here: Polygraphy's `IndicesCompareFunc` wants the logits replaced by their top-k indices,
while the other comparisons need the logits themselves.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from .tolerances import Tolerance

REPORTED_K = 5  # top-1 and top-5 agreement are reported whatever the tolerance checks


def topk_agreement(ref: np.ndarray, out: np.ndarray, k: int) -> float:
    """Share of the reference's top-k classes found in the artifact's top-k, over every input
    (order inside the k ignored): 1.0 when every input's top-k is the same set; top-1 agreement for k = 1."""
    k = min(k, ref.shape[-1])
    top_r, top_o = np.argsort(-ref, -1)[:, :k], np.argsort(-out, -1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_r, top_o)]))


def nonfinite(outputs: dict[str, np.ndarray]) -> dict[str, int]:
    """{output name: how many NaN / inf values it holds}, for the outputs that hold any."""
    counts = {n: int(v.size - np.count_nonzero(np.isfinite(v))) for n, v in outputs.items()}
    return {n: c for n, c in counts.items() if c}


def _polygraphy(art: dict[str, np.ndarray], ref: dict[str, np.ndarray], tol: Tolerance):
    """{output: [(simple result, cosine result) per input]} from Polygraphy's comparators."""
    from polygraphy.comparator import Comparator, IterationResult, RunResults
    from polygraphy.comparator.compare import CosineSimilarityCompareFunc, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    def iterations(outputs, runner):  # one per input, contiguous float64 (saved outputs may be fp16 or fp64)
        rows = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in outputs.items()}
        n = len(next(iter(rows.values())))
        return [IterationResult({k: v[i : i + 1] for k, v in rows.items()}, runner_name=runner) for i in range(n)]

    results = RunResults([("artifact", iterations(art, "artifact")), ("reference", iterations(ref, "reference"))])
    funcs = [
        # Unset bounds never fail (the statistics are still computed): None atol with an rtol is 0.
        SimpleCompareFunc(
            atol=np.inf if tol.atol is None and tol.rtol is None else (tol.atol or 0.0),
            rtol=tol.rtol or 0.0,
            check_error_stat="elemwise",
        ),
        CosineSimilarityCompareFunc(cosine_similarity_threshold=-1.0 if tol.cosine is None else tol.cosine),
    ]
    colors, G_LOGGER.colors = G_LOGGER.colors, False  # else a note on stdout that `colored` is missing
    try:
        # Polygraphy logs every comparison on stdout; NaN / inf outputs are reported by `nonfinite`.
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL), np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            simple, cosine = Comparator.compare_accuracy(results, compare_func=funcs)
    finally:
        G_LOGGER.colors = colors
    pair = ("artifact", "reference")
    return {name: [(s[name], c[name]) for s, c in zip(simple[pair], cosine[pair])] for name in art}


def compare_set(art: dict[str, np.ndarray], ref: dict[str, np.ndarray], tol: Tolerance) -> tuple[dict, list[str]]:
    """({output: statistics}, failures) for one input set; `art` and `ref` hold the same output names."""
    stats: dict[str, dict] = {}
    failures: list[str] = []
    same = {n for n in art if art[n].shape == ref[n].shape}
    for n in art:
        if n not in same:
            failures.append(f"{n}: shape {art[n].shape} vs the reference's {ref[n].shape}")
    per_input = _polygraphy({n: art[n] for n in art if n in same}, {n: ref[n] for n in art if n in same}, tol)
    for n, rows in per_input.items():
        simple = [s.metric_values() for s, _ in rows]
        cosines = [c.metric_values()["cosine_similarity"] for _, c in rows]
        s = stats[n] = {
            "max_abs": float(np.max([v["max_absdiff"] for v in simple])),
            "mean_abs": float(np.mean([v["mean_absdiff"] for v in simple])),
            "max_rel": float(np.max([v["max_reldiff"] for v in simple])),
            "cosine": float(np.min(cosines)),  # what the bound checks
            "mean_cosine": float(np.mean(cosines)),
        }
        if np.isnan([s["max_abs"], s["cosine"]]).any():
            continue  # the NaN/inf check reports it
        if (tol.atol is not None or tol.rtol is not None) and not all(bool(r) for r, _ in rows):
            bounds = ", ".join(f"{k} {v:g}" for k, v in (("atol", tol.atol), ("rtol", tol.rtol)) if v is not None)
            failures.append(f"{n}: max abs {s['max_abs']:.3g}, max rel {s['max_rel']:.3g} beyond {bounds}")
        if tol.cosine is not None and s["cosine"] < tol.cosine:
            failures.append(f"{n}: cosine {s['cosine']:.6f} < {tol.cosine}")
    if "logits" in same:
        logits = stats.setdefault("logits", {})
        ks = sorted({1, REPORTED_K, *([tol.top_k] if tol.top_k else [])})
        logits.update({f"top{k}": topk_agreement(ref["logits"], art["logits"], k) for k in ks})
        agree = logits.get(f"top{tol.top_k}")
        if agree is not None and agree < 1.0:
            failures.append(f"logits: top-{tol.top_k} agreement {agree:.1%} < 100%")
    return stats, failures


def describe(tol: Tolerance) -> str:
    return ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in asdict(tol).items() if v is not None) or "none"
