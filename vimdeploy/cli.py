"""The `vimdeploy` command line: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import VimdeployError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class FriendlyGroup(click.Group):
    """Turns expected failures (VimdeployError) into one clear line and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VimdeployError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def emit(data, as_json: bool, human):
    """Print `data` as JSON for scripts, or with `human(data)` for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        human(data)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
ema_option = click.option("--ema", is_flag=True, help="Use the checkpoint's `model_ema` weights instead of `model`.")
nonfinite_option = click.option("--allow-nonfinite", is_flag=True,
                                help="Load a checkpoint whose weights hold NaN or inf (refused by default).")


def arch_options(fn):
    """Overrides for what a checkpoint's shapes cannot tell."""

    @click.option("--stride", type=int, default=None,
                  help="Patch stride (16, or 8 for the long-sequence models). Default: inferred.")
    @click.option("--trained-size", type=int, default=None,
                  help="Resolution the checkpoint was trained at. Default: inferred from its position embedding.")
    @functools.wraps(fn)
    def wrapper(*args, stride, trained_size, **kwargs):
        return fn(*args, overrides={"stride": stride, "img_size": trained_size}, **kwargs)

    return wrapper


@click.group(cls=FriendlyGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version")
def main():
    """vimdeploy: Vision Mamba (Vim) checkpoints to validated inference engines.

    \b
    Start with `vimdeploy demo` (no checkpoint needed), or with an official
    hustvl/Vim checkpoint:
      vimdeploy info vim_t_midclstok_76p1acc.pth
      vimdeploy predict vim_t_midclstok_76p1acc.pth cat.jpg
      vimdeploy infer vim_t_midclstok_76p1acc.pth --input batch.npy -o out.npz
    """


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@ema_option
@arch_options
@json_option
def info(checkpoint, ema, overrides, as_json):
    """Describe a Vim checkpoint: variant, parameters, resolution, tokens, file contents."""
    from .model.checkpoint import describe_nonfinite
    from .report import checkpoint_info

    data = checkpoint_info(checkpoint, ema=ema, **overrides)

    def human(d):
        m = d["model"]
        click.echo(f"{d['file']['path']}  ({d['file']['size_mb']:.1f} MB, sha256 {d['file']['sha256'][:16]}...)")
        click.echo(f"  variant      Vim {m['variant']}  (embed {m['embed_dim']}, depth {m['depth']}, "
                   f"d_state {m['d_state']}, d_inner {m['d_inner']}, dt_rank {m['dt_rank']})")
        click.echo(f"  parameters   {m['parameters']:,}")
        click.echo(f"  resolution   {m['img_size']}x{m['img_size']}, patch {m['patch_size']} stride {m['stride']}, "
                   f"grid {m['grid']}x{m['grid']}, {m['tokens']} tokens (class token in the middle, index {m['cls_index']})")
        click.echo(f"  classes      {m['num_classes']}")
        f = d["file"]
        click.echo(f"  weights from {f['weights_from']}  ({f['format']}, stored as {', '.join(f['stored_dtypes'])})")
        click.echo(f"  non-finite   {describe_nonfinite(f['nonfinite_weights'])}")
        click.echo(f"  file holds   {', '.join(f['top_level_keys']) or 'a bare state dict'}")
        if f.get("epoch") is not None:
            click.echo(f"  epoch        {f['epoch']}")
        if f.get("training_model_name"):
            click.echo(f"  trained as   {f['training_model_name']} at {f.get('training_input_size')}px")

    emit(data, as_json, human)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--img-size", default=None, help="Input resolution, N or HxW. Default: the model's own.")
@click.option("-k", "--top", "k", type=int, default=5, show_default=True, help="How many classes to show.")
@ema_option
@nonfinite_option
@json_option
def predict(model, images, img_size, k, ema, allow_nonfinite, as_json):
    """Classify images: top-k ImageNet classes with probabilities.

    Preprocessing is DeiT's evaluation transform (shorter side to size/0.875 with
    bicubic resampling, center crop, ImageNet mean/std).
    """
    from .data import load_images, topk
    from .model import DYNAMIC, parse_img_size
    from .runtime import open_engine

    engine = open_engine(model, ema=ema, allow_nonfinite=allow_nonfinite)
    size = parse_img_size(img_size)
    if size == DYNAMIC:
        raise click.BadParameter("predict runs at one size (N or HxW).", param_hint="--img-size")
    size = size or engine.input_hw or engine.default_input_size
    logits = engine.run(load_images(images, size))["logits"]
    results = [{"image": str(p), "top": row} for p, row in zip(images, topk(logits, k))]

    def human(rows):
        for r in rows:
            click.echo(r["image"])
            for t in r["top"]:
                click.echo(f"  {t['probability'] * 100:6.2f}%  {t['name']}  ({t['index']})")

    emit(results, as_json, human)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A .npy file holding an NCHW float32 batch (already normalised).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .npz to write: every output of an .onnx/.plan (logits, features, feature_map...); "
                   "logits and features of a checkpoint.")
@click.option("--features", is_flag=True, help="Make sure `features` is written (it is by default).")
@click.option("--outputs", "output_names", default=None,
              help="Comma-separated outputs to write instead, e.g. logits,feature_map,feature_map_11 (a checkpoint "
                   "gives any of them).")
@ema_option
@nonfinite_option
@json_option
def infer(model, input_path, output, features, output_names, ema, allow_nonfinite, as_json):
    """Run MODEL on a saved batch and write its outputs (the scriptable way to run any artifact).

    The batch may have any height and width the model takes (one size for a fixed export, any
    size on the patch grid for a checkpoint or an `--img-size dynamic` export). OUT is
    written atomically (a temporary file renamed into place).
    """
    import numpy as np

    from .errors import InputError
    from .fileio import atomic_path
    from .runtime import open_engine

    try:
        images = np.load(input_path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"cannot read {input_path} as a .npy array: {e}") from None
    engine = open_engine(model, ema=ema, allow_nonfinite=allow_nonfinite)
    names = [n.strip() for n in output_names.split(",") if n.strip()] if output_names else engine.default_outputs()
    if features and "features" not in names:
        names.append("features")
    outputs = engine.run(images, outputs=names)
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **outputs)
    summary = {"model": str(model), "input": str(input_path), "output": str(output),
               "batch": int(images.shape[0]), **{k: list(v.shape) for k, v in outputs.items()},
               "engine": engine.describe()}
    emit(summary, as_json, lambda s: click.echo(
        f"wrote {s['output']}: " + ", ".join(f"{k} {tuple(outputs[k].shape)}" for k in outputs)))


class _BatchType(click.ParamType):
    name = "N|dynamic"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).lower() == "dynamic":
            return value if isinstance(value, int) else "dynamic"
        try:
            if int(value) >= 1:
                return int(value)
        except ValueError:
            pass
        self.fail(f"{value!r} is neither a positive integer nor 'dynamic'", param, ctx)


def _progress(as_json: bool):
    """Progress lines with elapsed time, on stderr so that stdout stays clean for --json."""
    import time

    start = time.perf_counter()
    return lambda msg: click.echo(f"[{time.perf_counter() - start:6.1f}s] {msg}", err=True)


PRESETS_DIR = Path(__file__).resolve().parent / "export" / "presets"  # package data


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
    from .digits import CALIBRATION_DIR

    if str(value) == CALIBRATION_DIR.name:
        return CALIBRATION_DIR
    raise click.BadParameter(f"{value} is not a folder (nor 'digits', the built-in set).")


def precision_options(fn):
    """--precision and the FP16/INT8 knobs, shared by `export` and `convert`."""

    @click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
                  help="fp16: fp16 casts (RMSNorm/residual kept fp32 unless --keep-fp32 none); int8: Q/DQ, needs --calib.")
    @click.option("--calib", type=click.Path(file_okay=False, path_type=Path), default=None, callback=_calibration_dir,
                  help="INT8: a folder of .jpg/.png calibration images (preprocessed like `predict`), or 'digits' "
                       "for the set shipped with the package (the trained digits model's).")
    @click.option("--calib-method", type=click.Choice(["max", "entropy", "percentile"]), default="max",
                  show_default=True, help="INT8: how activation ranges are chosen from the calibration data.")
    @click.option("--percentile", type=float, default=99.99, show_default=True, help="INT8 percentile method's cut.")
    @click.option("--calib-limit", type=int, default=None, help="INT8: use at most this many calibration images.")
    @click.option("--exclude", multiple=True,
                  help="INT8: keep matching layers in fp32 (repeatable), e.g. x_proj, dt_proj, layers.0., head.")
    @click.option("--keep-fp32", default="norm,residual", show_default=True,
                  help="FP16: parts kept in fp32: 'norm', 'residual', both, or 'none'.")
    @functools.wraps(fn)
    def wrapper(*args, precision, calib, calib_method, percentile, calib_limit, exclude, keep_fp32, **kwargs):
        options = _convert_options(calib=calib, calib_method=calib_method, percentile=percentile,
                                   calib_limit=calib_limit, exclude=exclude, keep_fp32=keep_fp32)
        return fn(*args, precision=precision, convert_options=options, **kwargs)

    return wrapper


def _convert_options(calib=None, calib_method="max", percentile=99.99, calib_limit=None, exclude=(),
                     keep_fp32="norm,residual") -> dict:
    """Precision option values (as named on the command line and in presets) -> convert_precision's keywords."""
    keep = () if keep_fp32.strip() in ("", "none") else tuple(k.strip() for k in keep_fp32.split(","))
    return {"calib": calib, "method": calib_method, "percentile": percentile, "exclude": tuple(exclude),
            "keep_fp32": keep, "calib_limit": calib_limit, "progress": _bar("calibrating")}


def _tensorrt_recipe(precision: str, **given) -> dict:
    """`build --fp16/--int8`: the convert options of the tensorrt-fp16 / tensorrt-int8 preset (one
    recipe, whichever command asks for it), with the options given on the command line."""
    _, preset = _preset_values(f"tensorrt-{precision}")
    knobs = ("calib_method", "percentile", "exclude", "keep_fp32")
    return _convert_options(**{k: preset[k] for k in knobs if k in preset}, **given)


def _bar(label: str):
    """A tqdm progress bar driven by (done, total) callbacks, on stderr."""
    state = {}

    def update(done: int, total: int):
        from tqdm import tqdm

        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=label, unit="batch", file=sys.stderr, leave=False)
        state["bar"].update(done - state["bar"].n)
        if done >= total:
            state["bar"].close()

    return update


@main.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .onnx file to write (atomically; an existing file is kept unless --force).")
@click.option("--img-size", default=None,
              help="Input resolution: N (square), HxW (e.g. 224x320), each side patch + k*stride pixels; or "
                   "'dynamic': any size, the position embedding resampled in the graph. Default: the checkpoint's.")
@click.option("--feature-map", is_flag=True,
              help="Add the output feature_map (N, C, H/p, W/p): patch tokens after the final norm, image order.")
@click.option("--out-indices", default=None,
              help="Add feature_map_<i> for these blocks (e.g. 5,11,17,23): each block's output as hustvl/Vim's "
                   "segmentation backbone takes it (docs/backbone.md).")
@click.option("--batch", type=_BatchType(), default="1", show_default=True,
              help="Fixed batch size, or 'dynamic' for any batch.")
@click.option("--opset", type=int, default=None, help="ONNX opset (18-23). Default: 20.")
@click.option("--scan", type=click.Choice(["plugin", "onnx"]), default="plugin", show_default=True,
              help="plugin: one trt.plugins::BiSelectiveScan node per layer (TensorRT plugin / vimdeploy's ORT op); "
                   "onnx: standard ONNX ops only (Scan loops), runs anywhere.")
@click.option("--no-simplify", is_flag=True, help="Skip graph simplification (onnxscript optimizer).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@precision_options
@click.option("--preset", callback=_load_preset, is_eager=True, expose_value=False,
              help="Defaults from a JSON preset: a file, or a name from vimdeploy/export/presets (tensorrt-fp16, "
                   "tensorrt-int8, portable-fp32). Options given on the command line win.")
@ema_option
@nonfinite_option
@arch_options
@json_option
def export_cmd(checkpoint, output, img_size, feature_map, out_indices, batch, opset, scan, no_simplify, force,
               precision, convert_options, ema, allow_nonfinite, overrides, as_json):
    """Export a Vim CHECKPOINT to ONNX (validated with onnx.checker and shape inference).

    --precision fp16 / int8 writes the precision into the ONNX (fp16 casts, Q/DQ pairs), as
    TensorRT 11's strongly typed builder needs; ONNX Runtime runs every variant.
    """
    from .export import DEFAULT_OPSET
    from .export.precision import export_at_precision

    summary = export_at_precision(checkpoint, output, precision=precision, force=force,
                                  progress=_progress(as_json), convert_options=convert_options,
                                  img_size=img_size, feature_map=feature_map, out_indices=out_indices or (),
                                  batch=batch, opset=opset or DEFAULT_OPSET,
                                  scan=scan, simplify=not no_simplify, ema=ema,
                                  overrides={**overrides, "allow_nonfinite": allow_nonfinite})

    def human(s):
        t = s["timings"]
        top = ", ".join(f"{k} {v}" for k, v in list(s["op_counts"].items())[:6])
        click.echo(f"wrote {s['output']}  ({s['size_mb']:.1f} MB, {s['nodes']} nodes: {top}, ...)")
        at = "any size on the patch grid" if s["img_size"] == "dynamic" else f"{s['img_size']} px ({s['tokens']} tokens)"
        click.echo(f"  Vim {s['variant']} at {at}, {s['flavor']} flavor, "
                   f"batch {s['batch']}, opset {s['opset']}; export {t['export_s']:.1f}s, total {t['total_s']:.1f}s")
        click.echo(f"  outputs: {', '.join(s['outputs'])}")

    emit(summary, as_json, human)


@main.command()
@click.argument("source", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .onnx to write (atomically; an existing file is kept unless --force).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@precision_options
@json_option
def convert(source, output, force, precision, convert_options, as_json):
    """Convert an fp32 ONNX from `vimdeploy export` to fp16 or int8."""
    from .export.precision import convert_precision

    info = convert_precision(source, output, precision, force=force, **convert_options)
    emit(info, as_json, lambda i: click.echo(f"wrote {i['output']} ({i['precision']}, {i['size_mb']:.1f} MB)"))


@main.command()
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ref", "ref", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The PyTorch checkpoint the artifact was made from (the reference).")
@click.option("--images", "images", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Image files or folders to compare on (repeatable). Default: scikit-image's sample photos.")
@click.option("--batch", type=int, default=2, show_default=True, help="How many seeded random inputs to add.")
@click.option("--atol", type=float, default=None, help="Max abs error allowed on logits. Default: per precision (fp32: 1e-4).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--img-size", default=None,
              help="Size to compare at (N or HxW) for an artifact that takes several. Default: the artifact's, "
                   "else the checkpoint's.")
@ema_option
@nonfinite_option
@json_option
def validate(artifact, ref, images, batch, atol, seed, img_size, ema, allow_nonfinite, as_json):
    """Compare ARTIFACT with the PyTorch reference on the same inputs; exit 1 beyond tolerance.

    Inputs: seeded random tensors and real photographs. Reports max abs / relative error,
    cosine similarity, top-1 / top-5 agreement, for every output of the artifact.
    """
    from .validation import format_report, validate_artifact

    report = validate_artifact(artifact, ref, images=images, random_batch=batch, atol=atol, seed=seed, ema=ema,
                               img_size=img_size, allow_nonfinite=allow_nonfinite,
                               progress=None if as_json else _progress(as_json))
    emit(report, as_json, lambda r: click.echo(format_report(r)))
    if not report["passed"]:
        sys.exit(1)


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--data", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Images: one subfolder per class (sorted names = class indices), or any folder with --labels.")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A text file of 'relative/path.jpg label' lines, for a --data folder without class subfolders.")
@click.option("--limit", type=int, default=None, help="Use only the first N images (in the dataset's sorted order).")
@click.option("--batch", "batch_size", type=int, default=32, show_default=True, help="Images per run call.")
@click.option("--img-size", default=None,
              help="Size (N or HxW) for artifacts that take several (checkpoints, dynamic exports). Default: "
                   "each artifact's own, else its trained resolution.")
@ema_option
@nonfinite_option
@json_option
def evaluate(artifacts, data, labels_file, limit, batch_size, img_size, ema, allow_nonfinite, as_json):
    """Top-1 / top-5 accuracy of each ARTIFACT (checkpoint, .onnx, .plan) on labelled images.

    \b
    With several artifacts, also the share of images where each one's top-1 class is the first's:
      vimdeploy evaluate vim.pth vim.onnx vim_fp16.onnx vim_int8.onnx --data imagenet/val --limit 5000
    """
    from .evaluation import evaluate as run_evaluation, format_results

    def progress(label, total):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=label, unit="img", file=sys.stderr, leave=False, disable=as_json)
        return lambda n: (bar.update(n), bar.n >= total and bar.close())

    results = run_evaluation(artifacts, data, labels_file=labels_file, limit=limit, batch_size=batch_size,
                             img_size=img_size, ema=ema, allow_nonfinite=allow_nonfinite, progress=progress)
    emit(results, as_json, lambda r: click.echo(format_results(r)))


@main.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-o", "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("vimdeploy-demo"),
              show_default=True, help="Where the demo writes its files.")
@json_option
def demo(checkpoint, out_dir, as_json):
    """Run the whole pipeline once on CHECKPOINT, or on a built-in model if none is given.

    Without a checkpoint, an UNTRAINED Vim-Tiny (fixed seed) is made and used, clearly
    labelled as such: its predictions are meaningless, but every stage runs for real.
    """
    from .demo import run_demo

    report = run_demo(checkpoint, out_dir, echo=None if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(report, indent=2))


@main.group()
def plugin():
    """The native BiSelectiveScan libraries: CUDA kernel and TensorRT plugin (plugins/, CMake + nvcc), CPU kernel."""


@plugin.command("build")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CMake build folder. Default: $VIMDEPLOY_PLUGIN_BUILD_DIR, else plugins/build in a checkout, "
                   "else ~/.cache/vimdeploy/plugins-<version>-<hash> (installed package).")
@click.option("--cuda-archs", default=None, help='CUDA architectures, e.g. "87" for Jetson Orin. Default: 80;86;87;89;90.')
@click.option("--tensorrt-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A TensorRT install (include/, lib/). Without it only the kernel library is built.")
@click.option("-j", "--jobs", type=int, default=None, help="Parallel compile jobs.")
@json_option
def plugin_build(build_dir, cuda_archs, tensorrt_root, jobs, as_json):
    """Configure and build plugins/ and print the library paths."""
    from .ops.native import build

    paths = build(build_dir=build_dir, cuda_archs=cuda_archs, tensorrt_root=tensorrt_root, jobs=jobs)
    emit({k: str(v) for k, v in paths.items()}, as_json, lambda d: [click.echo(f"{k:20s} {v}") for k, v in d.items()])


@plugin.command("path")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@json_option
def plugin_path(build_dir, as_json):
    """Print the paths of the built libraries (CUDA kernel, TensorRT plugins, CPU kernel); exit 1 if none is built."""
    from .errors import ArtifactError
    from .ops.native import cpu_library_path, library_paths

    paths = library_paths(build_dir)
    if "cpu" not in paths and cpu_library_path() is not None:
        paths["cpu"] = cpu_library_path()
    if not paths:
        raise ArtifactError("no plugin library is built yet: run `vimdeploy plugin build`.")
    emit({k: str(v) for k, v in paths.items()}, as_json, lambda d: [click.echo(f"{k:20s} {v}") for k, v in d.items()])


@main.command("build")
@click.argument("model", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The engine to write (.plan), plus OUTPUT.json (versions, GPU, profile, plugin): both atomically.")
@click.option("--fp16", "precision", flag_value="fp16", default=None,
              help="FP16 engine: an fp32 ONNX is converted first (as `vimdeploy convert --precision fp16`).")
@click.option("--int8", "precision", flag_value="int8",
              help="INT8 (Q/DQ) engine from an fp32 ONNX, with the tensorrt-int8 preset's recipe; needs --calib.")
@click.option("--calib", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="INT8: a folder of calibration images.")
@click.option("--calib-limit", type=int, default=None, help="INT8: use at most this many calibration images.")
@click.option("--plugin", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="TensorRT plugin library. Default: libvimdeploy_trt_plugin.so from `vimdeploy plugin build`.")
@click.option("--batch", default=None, help="Batch profile MIN:OPT:MAX (dynamic-batch ONNX). Default: 1:8:32.")
@click.option("--img-size", default=None,
              help="Resolution profile for an `--img-size dynamic` ONNX: MIN:OPT:MAX, each N or HxW "
                   "(e.g. 224:384:1248 or 224x224:384x640:1248x1248).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Tactic timing cache file: read if present, updated after the build (faster rebuilds).")
@click.option("--workspace-mb", type=int, default=None, help="Builder workspace limit in MiB. Default: TensorRT's.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None,
              help="builder_optimization_level 0-5 (TensorRT's default 3; higher builds longer, may run faster).")
@click.option("--tf32", is_flag=True, help="Allow TF32 for fp32 matmuls (faster on Ampere+, ~1e-3 less exact).")
@click.option("--force", is_flag=True, help="Replace OUTPUT (and its .json) if they exist.")
@click.option("--verbose", is_flag=True, help="Print TensorRT's verbose log.")
@json_option
def build_cmd(model, output, precision, calib, calib_limit, plugin, batch, img_size, timing_cache, workspace_mb,
              opt_level, tf32, force, verbose, as_json):
    """Build a TensorRT engine from a vimdeploy ONNX (strongly typed: the precision is the ONNX's).

    \b
    Examples:
      vimdeploy build vim_t.onnx -o vim_t.plan --batch 1:8:32 --timing-cache trt.cache
      vimdeploy build vim_t.onnx --fp16 -o vim_t_fp16.plan
    """
    from .tensorrt.builder import build_engine

    summary = build_engine(model, output, precision=precision,
                           convert_options=_tensorrt_recipe(precision, calib=calib, calib_limit=calib_limit)
                           if precision else None,
                           plugin=plugin, batch=batch, img_size=img_size, timing_cache=timing_cache,
                           workspace_mb=workspace_mb, opt_level=opt_level, tf32=tf32, force=force,
                           progress=not as_json, verbose=verbose, echo=None if as_json else _progress(as_json))
    emit(summary, as_json, lambda s: click.echo(
        f"wrote {s['output']} ({s['size_mb']:.1f} MB, {s['precision']}, TensorRT {s['tensorrt']}, {s['gpu']}) "
        f"and {s['sidecar']}"))


@main.command("inspect")
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def inspect_cmd(artifact, as_json):
    """Describe an ONNX or a TensorRT engine; for an ONNX, say whether TensorRT will take it.

    Inputs/outputs, metadata, precision, node and op counts. The TensorRT verdict checks
    Q/DQ types, zero points and scales, ops and attributes against onnx-tensorrt's support
    table, and BiSelectiveScan nodes against the op contract. Exit 1 if incompatible.
    """
    from .inspection import format_report, inspect_artifact

    report = inspect_artifact(artifact)
    emit(report, as_json, lambda r: click.echo(format_report(r)))
    if report["kind"] == "onnx" and not report["tensorrt"]["compatible"]:
        sys.exit(1)


@main.command("triton-repo")
@click.argument("engine", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", "repo", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The model repository folder (created if missing).")
@click.option("--name", default="vim", show_default=True, help="Model name (its folder in the repository).")
@click.option("--max-batch", type=int, default=None, help="Triton max_batch_size. Default: the engine's max batch.")
@click.option("--queue-delay-us", type=int, default=100, show_default=True,
              help="dynamic_batching max_queue_delay_microseconds.")
@click.option("--instances", type=int, default=1, show_default=True, help="Engine instances per GPU.")
@click.option("--gpus", default=None, help="GPU ids the instances go on, e.g. 0,1. Default: every GPU.")
@click.option("--labels", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Class names for `logits`, one per line. Default: ImageNet-1k's for a 1000-class engine.")
@click.option("--no-warmup", is_flag=True, help="Leave out model_warmup (random batches of 1 and the max batch).")
@click.option("--force", is_flag=True, help="Replace the model folder if it exists.")
@json_option
def triton_repo(engine, repo, name, max_batch, queue_delay_us, instances, gpus, labels, no_warmup, force, as_json):
    """Write a Triton Inference Server model repository for ENGINE (needs its .json sidecar)."""
    from .errors import InputError
    from .triton import write_triton_repo

    try:
        gpu_ids = [int(g) for g in gpus.split(",")] if gpus else None
    except ValueError:
        raise InputError(f"--gpus takes comma-separated GPU ids, e.g. 0,1; got {gpus!r}.") from None
    info = write_triton_repo(engine, repo, name=name, max_batch=max_batch, queue_delay_us=queue_delay_us,
                             instances=instances, force=force, gpus=gpu_ids, labels=labels, warmup=not no_warmup)
    emit(info, as_json, lambda i: click.echo(
        f"wrote {i['model']} (max_batch_size {i['max_batch_size']}); see {i['repository']}/README.md "
        "for loading the plugin library in tritonserver"))



@main.command("serve")
@click.argument("artifact", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--name", default="vim", show_default=True, help="Model name in the server's URLs.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the HTTP, gRPC and metrics endpoints listen on (0.0.0.0: every interface).")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="Prometheus metrics (/metrics).")
@click.option("--max-batch", type=int, default=8, show_default=True,
              help="Largest batch the dynamic batcher forms (and the largest a request may send).")
@click.option("--max-queue-delay-us", type=int, default=100, show_default=True,
              help="How long a request may wait for others to batch with.")
@click.option("--instances", type=int, default=1, show_default=True,
              help="Model instances, each its own process with its own engine.")
@click.option("--features", is_flag=True, help="Also serve the `features` output.")
@click.option("--labels", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Class names for top5_labels, one per line. Default: ImageNet-1k's for 1000 classes.")
@click.option("--exit-timeout", type=int, default=30, show_default=True,
              help="Seconds in-flight requests get to finish after SIGINT/SIGTERM.")
@click.option("--verbose", is_flag=True, help="Print Triton's own log.")
@ema_option
@nonfinite_option
@json_option
def serve_cmd(artifact, name, host, http_port, grpc_port, metrics_port, max_batch, max_queue_delay_us, instances,
              features, labels, exit_timeout, verbose, ema, allow_nonfinite, as_json):
    """Serve ARTIFACT (checkpoint, .onnx or .plan) with Triton Inference Server until Ctrl-C / SIGTERM.

    \b
    KServe v2 HTTP and gRPC with dynamic batching. Inputs (one per request): `images`
    FP32 N x 3 x S x S, normalised; or `image_bytes` BYTES N x 1, encoded JPEG/PNG,
    preprocessed like `predict`. Outputs: logits, top5_indices, top5_labels,
    top5_scores (and features with --features). Needs `pip install 'vimdeploy[serve]'`.
    \b
    Example:
      vimdeploy serve vim_t.onnx --max-batch 16 --instances 2
      curl localhost:8000/v2/health/ready
      python samples/triton/client.py cat.jpg --url localhost:8000
    """
    from .serving import serve

    def ready(info):
        if as_json:
            click.echo(json.dumps({"event": "ready", **info}))
        else:
            click.echo(f"serving {info['model']} ({Path(info['artifact']).name}, {info['engine']['backend']}, "
                       f"{info['spec']['img_size']}px, max batch {info['max_batch']}, {info['instances']} "
                       f"instance(s)): HTTP {info['http']}, gRPC {info['grpc']}, metrics {info['metrics']}. "
                       "Ctrl-C to stop.")
        sys.stdout.flush()

    summary = serve(artifact, name=name, host=host, http_port=http_port, grpc_port=grpc_port,
                    metrics_port=metrics_port, max_batch=max_batch, queue_delay_us=max_queue_delay_us,
                    instances=instances, features=features, labels=labels, ema=ema, allow_nonfinite=allow_nonfinite,
                    exit_timeout_s=exit_timeout,
                    on_ready=ready, echo=(lambda line: click.echo(line, err=True)) if verbose else None)
    emit({"event": "stopped", **summary}, as_json,
         lambda s: click.echo(f"stopped (tritonserver exit status {s['server_exit_code']})"))


@main.command("bench")
@click.argument("model", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--model", "model_name", type=click.Choice(["vim_tiny", "vim_small", "vim_base"]), default=None,
              help="An untrained Vim built from VARIANTS (no file needed) instead of MODEL.")
@click.option("--scan", type=click.Choice(["auto", "fast", "reference", "cpu", "cuda"]), default=None,
              help="Scan backend for a checkpoint or --model (vimdeploy.ops). Default: cuda on the GPU, auto on the CPU.")
@click.option("--sizes", default="224,512,1024", show_default=True,
              help="Resolutions; a size off the 16-px patch grid (738) is snapped to the nearest one (736).")
@click.option("--batch", "batches", default="1", show_default=True, help="Fixed batch sizes, comma-separated.")
@click.option("--max-batch", type=int, default=None,
              help="Also run the largest batch that fits, trying N, N/2, ... on CUDA out-of-memory.")
@click.option("--dtype", type=click.Choice(["fp16", "fp32"]), default=None,
              help="Default: fp16 on the GPU, fp32 on the CPU. fp16 Vim keeps the scan parameters and residual in fp32.")
@click.option("--cuda-graphs", is_flag=True, help="Replay MODEL as a CUDA graph (not the --compare models).")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile a checkpoint MODEL (fuses the element-wise work around the scan; compiles per shape).")
@click.option("--compare", multiple=True, type=click.Choice(["deit_tiny", "deit_tiny_eager", "deit_tiny_sdpa"]),
              help="Also run timm's DeiT-Ti (untrained) at each size: deit_tiny = eager and SDPA attention. Needs timm.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cpu only for CPU-capable models (--scan fast, .onnx); timed by the wall clock there.")
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--iters", type=int, default=50, show_default=True, help="Timed calls per configuration (at most).")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Time budget per configuration.")
@click.option("--max-forward-s", type=float, default=10.0, show_default=True,
              help="A call slower than this is recorded as too slow and larger sizes of that model are skipped.")
@click.option("--profile", "profile_size", type=int, default=None,
              help="Also break MODEL's GPU time down by kernel category (torch.profiler) at this size, batch 1 and max.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write all results as JSON.")
@click.option("--plot-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write bench_throughput.png and bench_memory.png (needs matplotlib).")
@json_option
def bench_cmd(model, model_name, scan, sizes, batches, max_batch, dtype, cuda_graphs, compile_, compare, device, warmup,
              iters, seconds, max_forward_s, profile_size, json_out, plot_dir, as_json):
    """Throughput, batch-1 latency and peak GPU memory over resolutions and batch sizes.

    \b
    Examples:
      vimdeploy bench --model vim_tiny --cuda-graphs --sizes 224,512,1024 --batch 1 --max-batch 128
      vimdeploy bench vim_t.pth --scan fast --compare deit_tiny --json-out bench.json --plot-dir plots/
      vimdeploy bench vim_t.onnx --device cpu --sizes 224
    """
    from .bench import main_bench

    result = main_bench(model=model, model_name=model_name, scan=scan, sizes=sizes, batches=batches,
                        max_batch=max_batch, dtype=dtype, cuda_graphs=cuda_graphs, compile=compile_, compare=compare,
                        device=device,
                        warmup=warmup, iters=iters, seconds=seconds, max_forward_s=max_forward_s,
                        profile_size=profile_size, json_out=json_out, plot_dir=plot_dir, progress=not as_json)
    from .bench import format_table

    emit(result, as_json, lambda r: click.echo(format_table(r)))

if __name__ == "__main__":  # pragma: no cover
    main()
