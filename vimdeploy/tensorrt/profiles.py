"""Optimization-profile sizes over height and width, for `--img-size dynamic` exports.

Pure helpers (no TensorRT): `vimdeploy build --img-size MIN:OPT:MAX` where each step is N
(both sides) or HxW, and the check that every side of the profile is on the model's patch
grid (patch + k*stride pixels; the ONNX metadata records patch and stride).
"""

from __future__ import annotations

from ..errors import InputError

__all__ = ["parse_size_range", "check_profile_grid"]


def parse_size_range(text: str | None) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """ "224:384:1248" -> ((224, 384, 1248), (224, 384, 1248)); "224x320:384x640:1248x1248" ->
    (heights, widths) = ((224, 384, 1248), (320, 640, 1248)); "384" -> one size; None -> None."""
    if text is None:
        return None
    steps = str(text).lower().split(":")
    if len(steps) == 1:
        steps *= 3
    try:
        pairs = [tuple(int(v) for v in step.split("x")) for step in steps]
        pairs = [p * 2 if len(p) == 1 else p for p in pairs]
    except ValueError:
        pairs = []
    if len(steps) != 3 or len(pairs) != 3 or any(len(p) != 2 for p in pairs):
        raise InputError(
            f"--img-size takes MIN:OPT:MAX, each N or HxW (e.g. 224:384:1248 or "
            f"224x224:384x640:1248x1248); got {text!r}."
        )
    hs = (pairs[0][0], pairs[1][0], pairs[2][0])
    ws = (pairs[0][1], pairs[1][1], pairs[2][1])
    for side in (hs, ws):
        if not 1 <= side[0] <= side[1] <= side[2]:
            raise InputError(f"--img-size needs 1 <= MIN <= OPT <= MAX for height and width; got {text!r}.")
    return hs, ws


def check_profile_grid(profile: dict, metadata: dict) -> None:
    """Every H and W of a make_profile() result on the patch grid of the ONNX (its metadata's
    patch_size and stride; nothing to check for an ONNX without them)."""
    patch_text, stride_text = str(metadata.get("patch_size", "")), str(metadata.get("stride", ""))
    if not (patch_text.isdigit() and stride_text.isdigit()):
        return
    patch, stride = int(patch_text), int(stride_text)
    bad = sorted({s for shape in profile.values() for s in shape[2:] if s < patch or (s - patch) % stride})
    if bad:
        raise InputError(
            f"--img-size {', '.join(map(str, bad))}: each side must be {patch} + k*{stride} pixels for this model."
        )
