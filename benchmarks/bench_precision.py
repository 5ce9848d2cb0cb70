"""What FP16 and INT8 cost: accuracy on the trained digits Vim, fidelity on the golden Vim-Ti.

    python benchmarks/bench_precision.py [--golden ../shared/golden] [--json benchmarks/results/precision.json]

Everything runs in ONNX Runtime on the CPU (the ONNX files are the ones TensorRT 11 builds
from). Prints a markdown table per experiment; docs/precision.md holds one run's output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from vimdeploy import digits
from vimdeploy.export import export_onnx
from vimdeploy.export.precision import convert_precision
from vimdeploy.runtime import open_engine


def cosine(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def logits(path, x):
    return open_engine(path).run(x)["logits"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--golden", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "golden")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {"digits": [], "golden": []}
    tmp = Path(tempfile.mkdtemp(prefix="vimdeploy-precision-"))

    # --- the trained digits model: accuracy per precision and per INT8 recipe ----------------
    x, y = digits.digit_batch("test")
    calib = tmp / "calib"
    digits.write_calibration_images(calib, 128)
    fp32 = tmp / "digits.onnx"
    export_onnx(digits.WEIGHTS, fp32, batch="dynamic", scan="plugin")
    ref = logits(fp32, x)
    base = digits.accuracy(ref, y)
    recipes = [("fp32", {}), ("fp16", {"keep_fp32": ("norm", "residual")}), ("fp16", {"keep_fp32": ()})]
    for method in ("max", "entropy", "percentile"):
        recipes.append(("int8", {"method": method}))
    for exclude in (("x_proj",), ("x_proj", "dt_proj"), ("layers.0.", "layers.3."), ("head",)):
        recipes.append(("int8", {"method": "max", "exclude": exclude}))
    print("| precision | recipe | accuracy | drop (points) | top-1 agreement | min cosine |")
    print("| --- | --- | --- | --- | --- | --- |")
    for i, (precision, options) in enumerate(recipes):
        path = fp32
        if precision != "fp32":
            path = tmp / f"digits_{i}.onnx"
            convert_precision(
                fp32, path, precision, calib=calib if precision == "int8" else None, cache_dir=tmp / "cache", **options
            )
        out = logits(path, x)
        row = {
            "precision": precision,
            "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
            "accuracy": digits.accuracy(out, y),
            "drop": base - digits.accuracy(out, y),
            "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).mean()),
            "min_cosine": float(cosine(out, ref).min()),
        }
        results["digits"].append(row)
        recipe = ", ".join(f"{k}={'+'.join(v) if isinstance(v, tuple) else v}" for k, v in options.items()) or "-"
        print(
            f"| {precision} | {recipe or '-'} | {row['accuracy']:.2f}% | {row['drop']:+.2f} | "
            f"{row['top1_agreement']:.1%} | {row['min_cosine']:.6f} |",
            flush=True,
        )

    # --- the golden Vim-Ti: fidelity to the official code's logits ---------------------------
    if (args.golden / "vim_t_p16_seed30.pth").is_file():
        from PIL import Image
        from skimage import data as skdata

        g = np.load(args.golden / "vim_t_p16_seed30.expected.npz")
        gcal = tmp / "photos"
        gcal.mkdir()
        for name in ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field"):
            Image.fromarray(getattr(skdata, name)()).convert("RGB").save(gcal / f"{name}.png")
        gfp32 = tmp / "golden.onnx"
        export_onnx(args.golden / "vim_t_p16_seed30.pth", gfp32, batch="dynamic", scan="plugin")
        print("\n| golden Vim-Ti | recipe | max abs vs official | min cosine | top-1 agreement |")
        print("| --- | --- | --- | --- | --- |")
        for i, (precision, options) in enumerate(
            [
                ("fp32", {}),
                ("fp16", {"keep_fp32": ("norm", "residual")}),
                ("fp16", {"keep_fp32": ()}),
                ("int8", {"method": "max"}),
                ("int8", {"method": "percentile"}),
                ("int8", {"method": "max", "exclude": ("x_proj", "dt_proj")}),
            ]
        ):
            path = gfp32
            if precision != "fp32":
                path = tmp / f"golden_{i}.onnx"
                convert_precision(
                    gfp32,
                    path,
                    precision,
                    calib=gcal if precision == "int8" else None,
                    cache_dir=tmp / "cache",
                    **options,
                )
            out = logits(path, g["input"])
            row = {
                "precision": precision,
                "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                "max_abs": float(np.abs(out - g["logits"]).max()),
                "min_cosine": float(cosine(out, g["logits"]).min()),
                "top1_agreement": float((out.argmax(-1) == g["logits"].argmax(-1)).mean()),
            }
            results["golden"].append(row)
            recipe = ", ".join(f"{k}={'+'.join(v) if isinstance(v, tuple) else v}" for k, v in options.items()) or "-"
            print(
                f"| {precision} | {recipe} | {row['max_abs']:.2e} | {row['min_cosine']:.6f} "
                f"| {row['top1_agreement']:.0%} |",
                flush=True,
            )
    else:
        print(f"(golden not found at {args.golden}: skipped)", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
