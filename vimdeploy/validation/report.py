"""The human-readable table of a `validate` report."""

from __future__ import annotations

from .compare import describe
from .tolerances import Tolerance


def format_report(r: dict) -> str:
    kinds, precisions = r["kinds"], r["precisions"]
    lines = [
        f"{r['artifact']} ({kinds['artifact']}, {precisions['artifact']}) vs {r['reference']} "
        f"({kinds['reference']}, {precisions['reference']}): {r['precision']} tolerances, {r['img_size']} px"
    ]
    lines += [f"note: {n}" for n in r["notes"]]
    width = max(9, *(len(o) + 1 for o in r["outputs"]))
    sets = max(12, *(len(s) + 1 for s in r["sets"]))
    lines.append(
        f"  {'inputs':<{sets}}{'n':>4}  {'output':<{width}}{'max abs':>10}{'max rel':>10}{'cosine':>11}"
        f"{'top-1':>7}{'top-5':>7}"
    )
    for name, s in r["sets"].items():
        for output, m in s["outputs"].items():
            if "max_abs" not in m:
                continue
            agree = f"{m['top1']:>7.0%}{m['top5']:>7.0%}" if "top1" in m else ""
            lines.append(
                f"  {name:<{sets}}{s['inputs']:>4}  {output:<{width}}{m['max_abs']:>10.2e}{m['max_rel']:>10.2e}"
                f"{m['cosine']:>11.7f}{agree}"
            )
    rows = {kind: describe(Tolerance(**t)) for kind, t in r["tolerance"].items()}
    tols = (
        next(iter(rows.values())) if len(set(rows.values())) == 1 else "; ".join(f"{k}: {v}" for k, v in rows.items())
    )
    lines.append(f"tolerance on every output: {tols} (cosine: the smallest of any input)")
    lines.append("PASS" if r["passed"] else "FAIL: " + "; ".join(r["failures"]))
    if r.get("saved"):
        lines.append(f"wrote {r['saved']}: the reference's outputs with their inputs")
    return "\n".join(lines)
