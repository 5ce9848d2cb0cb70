"""`export` and `convert`: checkpoints to ONNX, ONNX to fp16 / int8; presets and the precision options."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from ..contract import PRECISIONS
from .options import (
    BatchType,
    arch_options,
    ema_option,
    emit,
    json_option,
    labels_option,
    nonfinite_option,
    progress_bar,
    progress_echo,
)

PRESETS_DIR = Path(__file__).resolve().parents[1] / "export" / "presets"  # package data


def _preset_values(value: str) -> tuple[Path, dict]:
    """A preset (a file, or a name from PRESETS_DIR): its path and option values ('_about' dropped)."""
    path = Path(value)
    if not path.is_file():
        path = PRESETS_DIR / f"{value}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.json"))) or "none found"
        raise click.BadParameter(f"no preset file or name {value!r} (presets: {known}).")
    try:
        return path, {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"{path} is not valid JSON: {e}") from None


def _load_preset(ctx, _param, value):
    """Eager: turn a preset's keys (option names, '_about' ignored) into this command's defaults."""
    if not value:
        return
    path, preset = _preset_values(value)
    names = {p.name for p in ctx.command.params}
    unknown = sorted(set(preset) - names)
    if unknown:
        raise click.BadParameter(f"{path}: unknown option(s) {', '.join(unknown)}.")
    ctx.default_map = {**(ctx.default_map or {}), **preset}


def _calibration_dir(_ctx, _param, value):
    """--calib: a folder, or the name of a calibration set shipped as package data."""
    if value is None or Path(value).is_dir():
        return value
    from ..digits import CALIBRATION_DIR

    if str(value) == CALIBRATION_DIR.name:
        return CALIBRATION_DIR
    raise click.BadParameter(f"{value} is not a folder (nor 'digits', the built-in set).")


def precision_options(fn):
    """--precision and the FP16/INT8 knobs, shared by `export` and `convert`."""

    @click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="fp32",
        show_default=True,
        help="fp16: fp16 casts (RMSNorm/residual kept fp32 unless --keep-fp32 none); int8: Q/DQ, needs --calib.",
    )
    @click.option(
        "--calib",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        callback=_calibration_dir,
        help="INT8: a folder of .jpg/.png calibration images (preprocessed like `predict`), or 'digits' "
        "for the set shipped with the package (the trained digits model's).",
    )
    @click.option(
        "--calib-method",
        type=click.Choice(["max", "entropy", "percentile"]),
        default="max",
        show_default=True,
        help="INT8: how activation ranges are chosen from the calibration data.",
    )
    @click.option("--percentile", type=float, default=99.99, show_default=True, help="INT8 percentile method's cut.")
    @click.option("--calib-limit", type=int, default=None, help="INT8: use at most this many calibration images.")
    @click.option(
        "--exclude",
        multiple=True,
        help="INT8: keep matching layers in fp32 (repeatable), e.g. x_proj, dt_proj, layers.0., head.",
    )
    @click.option(
        "--keep-fp32",
        default="norm,residual",
        show_default=True,
        help="FP16: parts kept in fp32: 'norm', 'residual', both, or 'none'.",
    )
    @functools.wraps(fn)
    def wrapper(*args, precision, calib, calib_method, percentile, calib_limit, exclude, keep_fp32, **kwargs):
        options = _convert_options(
            calib=calib,
            calib_method=calib_method,
            percentile=percentile,
            calib_limit=calib_limit,
            exclude=exclude,
            keep_fp32=keep_fp32,
        )
        return fn(*args, precision=precision, convert_options=options, **kwargs)

    return wrapper


def _convert_options(
    calib=None, calib_method="max", percentile=99.99, calib_limit=None, exclude=(), keep_fp32="norm,residual"
) -> dict:
    """Precision option values (as named on the command line and in presets) -> convert_precision's keywords."""
    keep = () if keep_fp32.strip() in ("", "none") else tuple(k.strip() for k in keep_fp32.split(","))
    return {
        "calib": calib,
        "method": calib_method,
        "percentile": percentile,
        "exclude": tuple(exclude),
        "keep_fp32": keep,
        "calib_limit": calib_limit,
        "progress": progress_bar("calibrating"),
    }


def tensorrt_recipe(precision: str, **given) -> dict:
    """`build --fp16/--int8`: the convert options of the tensorrt-fp16 / tensorrt-int8 preset (one
    recipe, whichever command asks for it), with the options given on the command line."""
    _, preset = _preset_values(f"tensorrt-{precision}")
    knobs = ("calib_method", "percentile", "exclude", "keep_fp32")
    return _convert_options(**{k: preset[k] for k in knobs if k in preset}, **given)


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .onnx file to write (atomically; an existing file is kept unless --force).",
)
@click.option(
    "--img-size",
    default=None,
    help="Input resolution: N (square), HxW (e.g. 224x320), each side patch + k*stride pixels; or "
    "'dynamic': any size, the position embedding resampled in the graph. Default: the checkpoint's.",
)
@click.option(
    "--feature-map",
    is_flag=True,
    help="Add the output feature_map (N, C, H/p, W/p): patch tokens after the final norm, image order.",
)
@click.option(
    "--out-indices",
    default=None,
    help="Add feature_map_<i> for these blocks (e.g. 5,11,17,23): each block's output as hustvl/Vim's "
    "segmentation backbone takes it (docs/backbone.md).",
)
@click.option(
    "--batch", type=BatchType(), default="1", show_default=True, help="Fixed batch size, or 'dynamic' for any batch."
)
@click.option("--opset", type=int, default=None, help="ONNX opset (18-23). Default: 20.")
@click.option(
    "--scan",
    type=click.Choice(["plugin", "onnx"]),
    default="plugin",
    show_default=True,
    help="plugin: one trt.plugins::BiSelectiveScan node per layer (TensorRT plugin / vimdeploy's ORT op); "
    "onnx: standard ONNX ops only (Scan loops), runs anywhere.",
)
@labels_option("Class names to write into the metadata, one per line. Default: ImageNet-1k's for 1000 classes.")
@click.option("--no-simplify", is_flag=True, help="Skip graph simplification (onnxscript optimizer).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@precision_options
@click.option(
    "--preset",
    callback=_load_preset,
    is_eager=True,
    expose_value=False,
    help="Defaults from a JSON preset: a file, or a name from vimdeploy/export/presets (tensorrt-fp16, "
    "tensorrt-int8, portable-fp32). Options given on the command line win.",
)
@ema_option
@nonfinite_option
@arch_options
@json_option
def export_cmd(
    checkpoint,
    output,
    img_size,
    feature_map,
    out_indices,
    batch,
    opset,
    scan,
    labels,
    no_simplify,
    force,
    precision,
    convert_options,
    ema,
    allow_nonfinite,
    overrides,
    as_json,
):
    """Export a Vim CHECKPOINT to ONNX (validated with onnx.checker and shape inference).

    --precision fp16 / int8 writes the precision into the ONNX (fp16 casts, Q/DQ pairs), as
    TensorRT 11's strongly typed builder needs; ONNX Runtime runs every variant.
    """
    from ..export import DEFAULT_OPSET
    from ..export.exporter import export_at_precision

    summary = export_at_precision(
        checkpoint,
        output,
        precision=precision,
        force=force,
        progress=progress_echo(),
        convert_options=convert_options,
        img_size=img_size,
        feature_map=feature_map,
        out_indices=out_indices or (),
        batch=batch,
        opset=opset or DEFAULT_OPSET,
        scan=scan,
        simplify=not no_simplify,
        labels=labels,
        ema=ema,
        overrides={**overrides, "allow_nonfinite": allow_nonfinite},
    )

    def human(s):
        t = s["timings"]
        top = ", ".join(f"{k} {v}" for k, v in list(s["op_counts"].items())[:6])
        click.echo(f"wrote {s['output']}  ({s['size_mb']:.1f} MB, {s['nodes']} nodes: {top}, ...)")
        at = (
            "any size on the patch grid" if s["img_size"] == "dynamic" else f"{s['img_size']} px ({s['tokens']} tokens)"
        )
        click.echo(
            f"  Vim {s['variant']} at {at}, {s['flavor']} flavor, "
            f"batch {s['batch']}, opset {s['opset']}; export {t['export_s']:.1f}s, total {t['total_s']:.1f}s"
        )
        if "precision_info" in s:
            click.echo(f"  {s['precision']}: converted in {t['convert_s']:.1f}s from the fp32 export (not kept)")
        click.echo(f"  outputs: {', '.join(s['outputs'])}")

    emit(summary, as_json, human)


@click.command()
@click.argument("source", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .onnx to write (atomically; an existing file is kept unless --force).",
)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@precision_options
@json_option
def convert(source, output, force, precision, convert_options, as_json):
    """Convert an fp32 ONNX from `vimdeploy export` to fp16 or int8."""
    from ..export.precision import convert_precision

    info = convert_precision(source, output, precision, force=force, **convert_options)
    emit(info, as_json, lambda i: click.echo(f"wrote {i['output']} ({i['precision']}, {i['size_mb']:.1f} MB)"))
