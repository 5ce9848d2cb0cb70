"""`vimdeploy validate A --ref B`: two of a checkpoint, an ONNX, a TensorRT engine or saved
outputs, run on the same inputs and compared output by output, input set by input set.

Which inputs: with saved outputs on either side, the inputs saved with them (replayed);
otherwise seeded random tensors, photographs, `--data DIR`, and for a quantized side
(int8 / fp8) the images it was calibrated with when no `--data` is given, so that it is
judged on inputs like the ones it will see as well as on random ones.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..tensorrt.sidecar import ENGINE_SUFFIXES, read_sidecar
from . import inputs
from .compare import compare_set, nonfinite
from .saved import SUFFIX, SavedOutputs, load_outputs, save_outputs
from .tolerances import RANDOM, TOLERANCES, looser, set_kind, tolerances

QUANTIZED = ("int8", "fp8")


def kind_of(path: str | Path) -> str:
    """checkpoint, onnx, engine or saved, by suffix (open_engine refuses an unknown one)."""
    suffix = Path(path).suffix.lower()
    if suffix == SUFFIX:
        return "saved"
    return "engine" if suffix in ENGINE_SUFFIXES else "onnx" if suffix == ".onnx" else "checkpoint"


def artifact_precision(path: str | Path, metadata: dict | None = None) -> tuple[str, str | None]:
    """(precision, note): an engine's from its sidecar (read without TensorRT), an ONNX's from its
    metadata (`vimdeploy.precision`); fp32 for a checkpoint, or where nothing records it (the note)."""
    if kind_of(path) == "engine":
        sidecar = read_sidecar(path)
        if sidecar is None:
            return "fp32", f"{Path(path).name} has no sidecar: fp32 tolerances assumed (pass --precision)"
        return sidecar.get("precision", "fp32"), None
    return (metadata or {}).get("precision", "fp32"), None


@dataclass
class Side:
    """One side of the comparison: a runnable engine, or saved outputs."""

    path: Path
    kind: str
    precision: str
    engine: object = None
    saved: SavedOutputs | None = None
    note: str | None = None

    @property
    def outputs(self) -> list[str]:
        return self.saved.output_names if self.saved else list(self.engine.outputs)

    @property
    def input_hw(self) -> tuple[int, int] | None:
        if self.saved:
            return tuple(next(iter(self.saved.inputs.values())).shape[2:])
        return tuple(self.engine.input_hw) if self.engine.input_hw else None

    def has_output(self, name: str) -> bool:
        if self.saved:
            return name in self.saved.output_names
        try:
            return self.engine.has_output(name)
        except InputError:  # a checkpoint refuses a name no model has
            return False

    def run(self, set_name: str, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        if not self.saved:
            return self.engine.run(x, outputs=names)
        saved = self.saved.inputs.get(set_name)
        if saved is None or saved.shape != x.shape or not np.array_equal(saved, x):
            raise InputError(f"{self.path} holds other inputs than the other side for the set {set_name!r}.")
        return {n: self.saved.outputs[set_name][n] for n in names}


def _open(path: Path, stack: contextlib.ExitStack, precisions, **options) -> Side:
    from ..runtime import open_engine

    kind = kind_of(path)
    if kind == "saved":
        saved = load_outputs(path, precisions)
        return Side(path, kind, saved.precision or "fp32", saved=saved)
    precision, note = artifact_precision(path)  # an engine's sidecar, before TensorRT is needed
    engine = stack.enter_context(open_engine(path, **options))
    if kind == "onnx":
        precision, note = artifact_precision(path, getattr(engine, "metadata", {}))
    return Side(path, kind, precision, engine=engine, note=note)


def _input_hw(a: Side, b: Side, img_size) -> tuple[int, int]:
    wanted = None
    if img_size is not None:  # vimdeploy.model (PyTorch) only where a size is asked for
        from ..model.config import DYNAMIC, parse_img_size

        wanted = parse_img_size(img_size)
        if wanted == DYNAMIC:
            raise InputError("--img-size for validate is one size (N or HxW), not 'dynamic'.")
    fixed = {s.path: s.input_hw for s in (a, b) if s.input_hw}
    if len(set(fixed.values())) > 1:
        raise InputError("the two take different inputs: " + ", ".join(f"{p} {_hw(hw)}" for p, hw in fixed.items()))
    hw = next(iter(fixed.values()), None)
    if hw and wanted and tuple(wanted) != hw:
        raise InputError(f"{next(iter(fixed))} takes {_hw(hw)} inputs only; got --img-size {img_size}.")
    live = next(s.engine for s in (a, b) if s.engine is not None)
    return tuple(hw or wanted or (live.default_input_size,) * 2)


def _hw(hw) -> str:
    return "x".join(map(str, hw))


def _input_sets(a: Side, b: Side, quantized: Side | None, o: dict, say) -> tuple[dict, dict, list[str]]:
    """({set: batch}, {set: where it came from}, notes)."""
    notes: list[str] = []
    saved = next((s for s in (a, b) if s.saved), None)
    if saved is not None:
        if o["images"] or o["data"]:
            raise InputError(f"the inputs come from {saved.path}: --images and --data do not apply.")
        batches = dict(saved.saved.inputs)
        if quantized and all(set_kind(n) == RANDOM for n in batches):
            notes.append(f"{saved.path} holds no image inputs: the quantized side is judged on random inputs only")
        return batches, {n: str(saved.path) for n in batches}, notes
    hw = _input_hw(a, b, o["img_size"])
    batches, sources = {}, {}
    if o["random_batch"] > 0:
        batches[RANDOM] = inputs.random_set(o["random_batch"], hw, o["seed"])
        sources[RANDOM] = f"seed {o['seed']}"
    names, photos, note = inputs.photo_set(hw, o["images"])
    if photos is not None:
        batches["photos"], sources["photos"] = photos, names
    notes += [note] if note else []
    folder = Path(o["data"]) if o["data"] else None
    if folder is None and quantized is not None:
        folder, note = inputs.recorded_calibration(getattr(quantized.engine, "metadata", {}) or {})
        notes += [f"{quantized.path}: {note}"] if note else []
    if folder is not None:
        name = "data" if o["data"] else "calibration"
        say(f"reading the {name} images in {folder}")
        sources[name], batches[name] = inputs.folder_set(folder, hw, o["limit"])
    if not batches:
        raise InputError("nothing to compare on: --batch 0 and no images.")
    return batches, sources, notes


def validate_artifact(
    artifact,
    ref,
    images=(),
    data=None,
    limit: int | None = None,
    random_batch: int = 2,
    atol: float | None = None,
    rtol: float | None = None,
    cosine: float | None = None,
    top_k: int | None = None,
    seed: int = 0,
    ema: bool = False,
    precision: str | None = None,
    img_size=None,
    allow_nonfinite: bool = False,
    device: str | None = None,
    save_ref=None,
    progress=None,
) -> dict:
    """Every output both sides give, of `artifact` against `ref` (each a checkpoint, an ONNX, an
    engine or saved outputs), per input set; pass/fail by the precision's row of TOLERANCES with
    the given bounds in place of its own. `save_ref`: also write the reference's outputs and the
    inputs to this .npz, for `validate X --ref it` elsewhere."""
    say = progress or (lambda _msg: None)
    say(f"opening {artifact} and the reference {ref}")
    options = {"ema": ema, "allow_nonfinite": allow_nonfinite, **({"device": device} if device else {})}
    with contextlib.ExitStack() as stack:
        a = _open(Path(artifact), stack, list(TOLERANCES), **options)
        b = _open(Path(ref), stack, list(TOLERANCES), **options)
        if precision is not None and precision not in TOLERANCES:
            raise InputError(f"--precision must be one of {', '.join(TOLERANCES)}; got {precision!r}.")
        used = precision or looser(a.precision, b.precision)
        tols = tolerances(used, atol=atol, rtol=rtol, cosine=cosine, top_k=top_k)
        names = [n for n in a.outputs if b.has_output(n)]
        if "logits" not in names:
            raise InputError(f"{artifact} and {ref} share no `logits` output to compare.")
        quantized = next((s for s in (a, b) if s.precision in QUANTIZED), None)
        o = {"images": images, "data": data, "limit": limit, "random_batch": random_batch, "seed": seed}
        batches, sources, notes = _input_sets(a, b, quantized, {**o, "img_size": img_size}, say)
        notes = [s.note for s in (a, b) if s.note] + notes
        results, failures, outs = {}, [], {"artifact": {}, "reference": {}}
        for name, x in batches.items():
            say(f"running {name} ({len(x)} inputs at {_hw(x.shape[2:])} px) through both")
            outs["artifact"][name], outs["reference"][name] = a.run(name, x, names), b.run(name, x, names)
            kind = set_kind(name)
            stats, fails = compare_set(outs["artifact"][name], outs["reference"][name], tols[kind])
            results[name] = {"inputs": len(x), "kind": kind, "from": sources[name], "outputs": stats}
            failures += [f"{name}: {f}" for f in fails]
        if save_ref:
            save_outputs(save_ref, batches, outs["reference"], b.precision)
            say(f"wrote {save_ref}")
    bad = {side: nonfinite({n: np.concatenate([o[n] for o in v.values()]) for n in names}) for side, v in outs.items()}
    failures = [
        f"{n}: {c} NaN/inf values in the {side}'s output" for side, d in bad.items() for n, c in d.items()
    ] + failures
    return {
        "artifact": str(artifact),
        "reference": str(ref),
        "kinds": {"artifact": a.kind, "reference": b.kind},
        "precision": used,
        "precisions": {"artifact": a.precision, "reference": b.precision},
        "engine": a.engine.describe() if a.engine is not None else None,
        "img_size": _hw(next(iter(batches.values())).shape[2:]),
        "outputs": names,
        "tolerance": {kind: asdict(t) for kind, t in tols.items()},
        "sets": results,
        "overall": _overall(results),
        "per_output": _per_output(results),
        "nonfinite": bad,
        "notes": notes,
        "saved": str(save_ref) if save_ref else None,
        "passed": not failures,
        "failures": failures,
    }


def _overall(results: dict) -> dict:
    """The logits over every input set: the largest error, the smallest cosine, top-1 agreement."""
    rows = [
        (s["inputs"], s["outputs"]["logits"]) for s in results.values() if "max_abs" in s["outputs"].get("logits", {})
    ]
    if not rows:
        return {}
    return {
        "max_abs": float(np.max([m["max_abs"] for _, m in rows])),
        "min_cosine": float(np.min([m["cosine"] for _, m in rows])),
        "top1": float(sum(n * m["top1"] for n, m in rows) / sum(n for n, _ in rows)),
    }


def _per_output(results: dict) -> dict:
    """Each output's worst over every input set: the largest max abs error, the smallest cosine."""
    merged: dict[str, dict] = {}
    for s in results.values():
        for name, m in s["outputs"].items():
            if "max_abs" in m:
                worst = merged.setdefault(name, {"max_abs": m["max_abs"], "cosine": m["cosine"]})
                worst["max_abs"] = float(np.max([worst["max_abs"], m["max_abs"]]))
                worst["cosine"] = float(np.min([worst["cosine"], m["cosine"]]))
    return merged
