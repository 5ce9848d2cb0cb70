"""What each precision and recipe costs: one accuracy table for the digits Vim and the golden Vim-Ti.

    VIMDEPLOY_GOLDEN=/path/to/golden python benchmarks/bench_accuracy.py [--out benchmarks/results/accuracy]

Writes accuracy.json and accuracy.md (docs/precision.md quotes the markdown). Everything runs
in ONNX Runtime on the CPU through `vimdeploy.runtime` (quantized models with their Q/DQ
unfused, i.e. TensorRT's arithmetic emulated in fp32). The reference is the fp32 ONNX.

* digits: the trained digits Vim (vimdeploy/digits.py). Calibration: the 128 shipped
  training digits (`--calib digits`); held-out: the 450-image test split (top-1, drop,
  agreement, logits cosine); random: 32 N(0, 1) inputs (seed 0, what `validate` feeds).
* golden: the golden Vim-Ti (untrained weights, so no accuracy; cosine and top-1 agreement).
  Calibration: 6 scikit-image photos; held-out: 4 other scikit-image photos; random: 2 inputs.

A second table per model ("sensitivity") quantizes one kind of layer at a time (INT8, max
calibration), activations and weights apart, to show where the error comes from; a third
lists the quantized activations' amax, RMS and outlier channels. About 30 minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vimdeploy import digits  # noqa: E402
from vimdeploy.export import export_onnx  # noqa: E402
from vimdeploy.export.int8 import calibrate, read_calibration_images  # noqa: E402
from vimdeploy.export.precision import convert_precision  # noqa: E402
from vimdeploy.export.sensitivity import activation_stats, group_sensitivity  # noqa: E402
from vimdeploy.fileio import write_text  # noqa: E402
from vimdeploy.runtime import open_engine  # noqa: E402

GOLDEN_CALIB = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field")
GOLDEN_HELD_OUT = ("camera", "coins", "horse", "immunohistochemistry")
# (precision, recipe label, convert_precision options); "default": what --precision gives without options.
DEFAULT_INT8 = "max, out_proj float (default, preset)"
RECIPES = [
    ("fp16", "keep_fp32=norm,residual", {}),
    ("int8", "max, every GEMM", {"method": "max", "keep_float": ()}),
    ("int8", "entropy, every GEMM", {"method": "entropy", "keep_float": ()}),
    ("int8", "percentile 99.99, every GEMM", {"method": "percentile", "keep_float": ()}),
    ("int8", "max, x_proj float", {"exclude": ("x_proj",), "keep_float": ()}),
    ("int8", "max, out_proj smoothed (alpha 0.5)", {"smooth": 0.5, "keep_float": ()}),
    ("int8", DEFAULT_INT8, {}),
    ("int8", "entropy, out_proj float", {"method": "entropy"}),
    ("fp8", "max, every GEMM (default)", {}),
    ("fp8", "max, out_proj float", {"keep_float": ("out_proj",)}),
]


def cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    return (ref * out).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(out, axis=-1)


def logits(path_or_model, x: np.ndarray) -> np.ndarray:
    with open_engine(path_or_model) as engine:
        return engine.run(x)["logits"]


def fused_logits(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    from vimdeploy.export.ort_op import scan_errors, session_options

    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    with scan_errors():
        return session.run(["logits"], {session.get_inputs()[0].name: x})[0]


def photos(names, size: int) -> np.ndarray:
    import skimage.data
    from PIL import Image

    from vimdeploy.data import preprocess

    return np.stack([preprocess(Image.fromarray(getattr(skimage.data, n)()).convert("RGB"), size) for n in names])


def compare(ref: dict, out: dict, labels=None) -> dict:
    row = {}
    for name in ("held_out", "random"):
        c = cosines(ref[name], out[name])
        row[f"{name}_cos_min"], row[f"{name}_cos_mean"] = float(c.min()), float(c.mean())
    row["top1_agreement"] = float((ref["held_out"].argmax(-1) == out["held_out"].argmax(-1)).mean())
    if labels is not None:
        row["top1"] = digits.accuracy(out["held_out"], labels)
    return row


def measure(name, fp32, calib, inputs, labels, tmp: Path, say) -> dict:
    """Every recipe of RECIPES on one model; then the sensitivity and outlier tables."""
    ref = {k: logits(fp32, v) for k, v in inputs.items()}
    rows = [{"precision": "fp32", "recipe": "-", **compare(ref, ref, labels)}]
    for i, (precision, label, options) in enumerate(RECIPES):
        path = tmp / f"{name}_{i}.onnx"
        convert_precision(fp32, path, precision, calib=calib, cache_dir=tmp / "cache", force=True, **options)
        out = {k: logits(path, v) for k, v in inputs.items()}
        rows.append({"precision": precision, "recipe": label, **compare(ref, out, labels)})
        numbers = {k: round(v, 4) for k, v in rows[-1].items() if isinstance(v, float)}
        say(f"{name}: {precision} {label}: {json.dumps(numbers)}")
    # The default INT8 file once more, through ONNX Runtime's fused INT8 kernels (what ORT runs
    # when Q/DQ may be fused): on x86 CPUs without VNNI they saturate, which TensorRT does not.
    default = tmp / f"{name}_{[r[1] for r in RECIPES].index(DEFAULT_INT8)}.onnx"
    fused = {k: fused_logits(default, v) for k, v in inputs.items()}
    rows.append(
        {"precision": "int8", "recipe": DEFAULT_INT8 + ", ORT fused INT8 kernels", **compare(ref, fused, labels)}
    )
    model = onnx.load(fp32)
    images = read_calibration_images(calib, tuple(inputs["held_out"].shape[2:]))
    amax, _ = calibrate(model, images, "max", cache_dir=tmp / "cache")

    def score(quantized):
        onnx.save(quantized, tmp / "probe.onnx")
        out = {k: logits(tmp / "probe.onnx", v) for k, v in inputs.items()}
        return {k: v for k, v in compare(ref, out).items() if k.endswith("_min")}

    return {
        "recipes": rows,
        "sensitivity": group_sensitivity(_marked(model), amax, score),
        "activations": activation_stats(model, amax, images),
    }


def _marked(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp32 model marked int8, so that the runtime opens its Q/DQ variants unfused."""
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    marked.metadata_props.add(key="vimdeploy.precision", value="int8")
    return marked


def markdown(results: dict) -> str:
    out = ["## Accuracy per precision and recipe", ""]
    out.append(
        "| model | precision | recipe | held-out top-1 | drop (points) | top-1 agreement "
        "| cosine held-out min / mean | cosine random min / mean |"
    )
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, result in results["models"].items():
        base = result["recipes"][0].get("top1")
        for r in result["recipes"]:
            top1 = f"{r['top1']:.2f}%" if "top1" in r else "-"
            drop = f"{base - r['top1']:+.2f}" if "top1" in r else "-"
            out.append(
                f"| {model} | {r['precision']} | {r['recipe']} | {top1} | {drop} | {r['top1_agreement']:.1%} "
                f"| {r['held_out_cos_min']:.4f} / {r['held_out_cos_mean']:.5f} "
                f"| {r['random_cos_min']:.4f} / {r['random_cos_mean']:.5f} |"
            )
    out += ["", "## Sensitivity: INT8 (max) on one kind of layer only, min cosine vs fp32", ""]
    out.append("| model | layers | tensors | held-out | random |")
    out.append("| --- | --- | --- | --- | --- |")
    for model, result in results["models"].items():
        for r in result["sensitivity"]:
            out.append(
                f"| {model} | {r['group']} | {r['tensors']} | {r['held_out_cos_min']:.4f} | {r['random_cos_min']:.4f} |"
            )
    out += ["", "## Quantized activations (calibration images): range, RMS, outlier channels", ""]
    out.append("| model | node | layers | amax | RMS | amax / RMS | top channel / median channel |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    for model, result in results["models"].items():
        for r in result["activations"]:
            out.append(
                f"| {model} | {r['node']} | {r['group']} | {r['amax']:.2f} | {r['rms']:.3f} "
                f"| {r['amax_over_rms']:.1f} | {r['top_channel_over_median']:.1f} |"
            )
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[1]
    golden = os.environ.get("VIMDEPLOY_GOLDEN") or root.parent / "shared" / "golden"
    parser.add_argument("--golden", type=Path, default=Path(golden), help="folder of the golden checkpoint")
    parser.add_argument("--out", type=Path, default=root / "benchmarks" / "results" / "accuracy")
    parser.add_argument("--skip-golden", action="store_true")
    args = parser.parse_args()
    say = lambda s: print(s, flush=True)  # noqa: E731
    results = {"reference": "fp32 ONNX", "models": {}}
    with tempfile.TemporaryDirectory(prefix="vimdeploy-accuracy-") as tmp:
        tmp = Path(tmp)
        fp32 = tmp / "digits_fp32.onnx"
        export_onnx(digits.WEIGHTS, fp32, batch="dynamic", scan="plugin")
        x, y = digits.digit_batch("test")
        rnd = np.random.default_rng(0).standard_normal((32, 3, 32, 32), dtype=np.float32)
        inputs = {"held_out": x, "random": rnd}
        results["models"]["digits"] = measure("digits", fp32, digits.CALIBRATION_DIR, inputs, y, tmp, say)
        golden = sorted(args.golden.glob("*.pth"))
        if golden and not args.skip_golden:
            from PIL import Image

            fp32 = tmp / "golden_fp32.onnx"
            export_onnx(golden[0], fp32, batch="dynamic", scan="plugin")
            calib = tmp / "golden_calib"
            calib.mkdir()
            import skimage.data

            for n in GOLDEN_CALIB:
                Image.fromarray(getattr(skimage.data, n)()).convert("RGB").save(calib / f"{n}.png")
            rnd = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
            inputs = {"held_out": photos(GOLDEN_HELD_OUT, 224), "random": rnd}
            results["models"]["golden Vim-Ti"] = measure("golden", fp32, calib, inputs, None, tmp, say)
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    write_text(json_path, json.dumps(results, indent=1) + "\n")
    write_text(md_path, markdown(results))
    say(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
