"""`info`, `predict`, `infer`, `validate`, `evaluate`, `demo`: checkpoints and artifacts run and compared."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..contract import PRECISIONS
from .options import (
    arch_options,
    device_option,
    ema_option,
    emit,
    json_option,
    labels_option,
    nonfinite_option,
    progress_echo,
    recipe_options,
)


@click.command("inspect")
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@ema_option
@arch_options
@json_option
def inspect(artifact, ema, overrides, as_json):
    """Describe any file: a checkpoint, an ONNX, a TensorRT engine, saved outputs (.npz / .npy).

    \b
    Checkpoint: variant, parameters, resolution, tokens, what the file holds.
    ONNX / engine: inputs and outputs, precision, the preprocessing and class names it carries;
    for an ONNX, node and op counts and whether TensorRT will take it (Q/DQ types, zero points and
    scales, ops and attributes against onnx-tensorrt's table, BiSelectiveScan nodes against the op
    contract): exit 1 if not. `info` is another name for this command.
    """
    from ..inspection import format_report, inspect_artifact

    report = inspect_artifact(artifact, ema=ema, **overrides)
    emit(report, as_json, lambda r: click.echo(format_report(r)))
    if report["kind"] == "onnx" and not report["tensorrt"]["compatible"]:
        sys.exit(1)


info = click.Command(
    "info",
    params=inspect.params,
    callback=inspect.callback,
    help="Another name for `vimdeploy inspect`: describe any file (checkpoint, ONNX, engine, .npz).",
    short_help="Another name for `inspect`.",
)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--img-size", default=None, help="Input resolution, N or HxW. Default: the model's own.")
@click.option("-k", "--top", "k", type=int, default=5, show_default=True, help="How many classes to show.")
@labels_option("Class names, one per line. Default: the model's own, else ImageNet-1k's for 1000 classes.")
@recipe_options
@device_option
@ema_option
@nonfinite_option
@json_option
def predict(
    model, images, img_size, k, labels, output_name, preprocessing_options, device, ema, allow_nonfinite, as_json
):
    """Classify images: the top-k classes with probabilities.

    Preprocessing and class names are the model's own (an export carries them); a checkpoint uses
    DeiT's evaluation transform (shorter side to size/0.875 with bicubic resampling, center crop,
    ImageNet mean/std). A model made by another tool takes --mean, --std and --labels.
    """
    from ..data import artifact_recipe, load_images, topk
    from ..model import DYNAMIC, parse_img_size
    from ..runtime import open_engine

    size = parse_img_size(img_size)
    if size == DYNAMIC:
        raise click.BadParameter("predict runs at one size (N or HxW).", param_hint="--img-size")
    options = {"logits_output": output_name} if output_name else {}
    with open_engine(model, device=device, ema=ema, allow_nonfinite=allow_nonfinite, **options) as engine:
        size = size or engine.input_hw or engine.default_input_size
        recipe, names = artifact_recipe(model, size, engine.num_classes, labels=labels, **preprocessing_options)
        logits = engine.run(load_images(images, recipe))["logits"]
    results = [{"image": str(p), "top": row} for p, row in zip(images, topk(logits, k, names))]

    def human(rows):
        for r in rows:
            click.echo(r["image"])
            for t in r["top"]:
                click.echo(f"  {t['probability'] * 100:6.2f}%  {t['name']}  ({t['index']})")

    emit(results, as_json, human)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A .npy file holding an NCHW float32 batch (already normalised).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .npz to write: every output of an .onnx/.plan (logits, features, feature_map...); "
    "logits and features of a checkpoint.",
)
@click.option("--features", is_flag=True, help="Make sure `features` is written (it is by default).")
@click.option(
    "--outputs",
    "output_names",
    default=None,
    help="Comma-separated outputs to write instead, e.g. logits,feature_map,feature_map_11 (a checkpoint "
    "gives any of them).",
)
@device_option
@ema_option
@nonfinite_option
@json_option
def infer(model, input_path, output, features, output_names, device, ema, allow_nonfinite, as_json):
    """Run MODEL on a saved batch and write its outputs (the scriptable way to run any artifact).

    The batch may have any height and width the model takes (one size for a fixed export, any
    size on the patch grid for a checkpoint or an `--img-size dynamic` export). OUT is
    written atomically (a temporary file renamed into place).
    """
    import numpy as np

    from ..errors import InputError
    from ..fileio import save_npz
    from ..runtime import open_engine

    try:
        images = np.load(input_path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"cannot read {input_path} as a .npy array: {e}") from None
    with open_engine(model, device=device, ema=ema, allow_nonfinite=allow_nonfinite) as engine:
        names = [n.strip() for n in output_names.split(",") if n.strip()] if output_names else engine.default_outputs()
        if features and "features" not in names:
            names.append("features")
        outputs = engine.run(images, outputs=names)
        description = engine.describe()
    save_npz(output, outputs)
    summary = {
        "model": str(model),
        "input": str(input_path),
        "output": str(output),
        "batch": int(images.shape[0]),
        **{k: list(v.shape) for k, v in outputs.items()},
        "engine": description,
    }
    emit(
        summary,
        as_json,
        lambda s: click.echo(f"wrote {s['output']}: " + ", ".join(f"{k} {tuple(outputs[k].shape)}" for k in outputs)),
    )


@click.command()
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--ref",
    "ref",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="What ARTIFACT should compute: a checkpoint, an .onnx, an engine, or saved outputs (.npz).",
)
@click.option(
    "--images",
    "images",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Image files or folders to compare on (repeatable). Default: scikit-image's sample photos.",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="A folder of images like the ones the model will see (subfolders included). Default for a "
    "quantized artifact: the images it was calibrated with.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Use only the first N images of --data / the calibration set.",
)
@click.option(
    "--batch", type=click.IntRange(min=0), default=2, show_default=True, help="How many seeded random inputs to add."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option(
    "--atol",
    type=click.FloatRange(min=0),
    default=None,
    help="Max abs error per element, every output. Default: per precision.",
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    default=None,
    help="Max error relative to the reference, per element (passes on either).",
)
@click.option(
    "--cosine", type=click.FloatRange(-1, 1), default=None, help="Min cosine similarity of each input's outputs."
)
@click.option(
    "--top-k",
    "top_k",
    type=click.IntRange(min=1),
    default=None,
    help="Every input's top-K classes must be the reference's.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Whose tolerances apply. Default: the looser of the two sides' (ONNX metadata, engine sidecar).",
)
@click.option(
    "--img-size",
    default=None,
    help="Size to compare at (N or HxW) when both take several. Default: the artifact's, else the checkpoint's.",
)
@click.option(
    "--save-ref",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the reference's outputs and the inputs to this .npz, to replay elsewhere with --ref.",
)
@device_option
@ema_option
@nonfinite_option
@json_option
def validate(
    artifact,
    ref,
    images,
    data,
    limit,
    batch,
    seed,
    atol,
    rtol,
    cosine,
    top_k,
    precision,
    img_size,
    save_ref,
    device,
    ema,
    allow_nonfinite,
    as_json,
):
    """Compare ARTIFACT with the reference on the same inputs; exit 1 beyond tolerance.

    \b
    Each of ARTIFACT and --ref: a checkpoint, an .onnx, a TensorRT engine or saved outputs (.npz):
      vimdeploy validate model.onnx --ref model.pth --save-ref ref.npz
      vimdeploy validate model.onnx --ref ref.npz          # the same inputs, replayed elsewhere
    Inputs: seeded random tensors, photos, --data; a quantized artifact (int8, fp8) also the images
    it was calibrated with. Reports max abs / relative error, cosine similarity, top-1 / top-5
    agreement, per input set and output.
    """
    from ..validation import format_report, validate_artifact

    report = validate_artifact(
        artifact,
        ref,
        images=images,
        data=data,
        limit=limit,
        random_batch=batch,
        atol=atol,
        rtol=rtol,
        cosine=cosine,
        top_k=top_k,
        seed=seed,
        ema=ema,
        precision=precision,
        img_size=img_size,
        allow_nonfinite=allow_nonfinite,
        device=device,
        save_ref=save_ref,
        progress=None if as_json else progress_echo(),
    )
    emit(report, as_json, lambda r: click.echo(format_report(r)))
    if not report["passed"]:
        sys.exit(1)


@click.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Images: one subfolder per class (sorted names = class indices), or any folder with --labels.",
)
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A text file of 'relative/path.jpg label' lines, for a --data folder without class subfolders.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Use only the first N images (in the dataset's sorted order).",
)
@click.option("--batch", "batch_size", type=int, default=32, show_default=True, help="Images per run call.")
@click.option(
    "--img-size",
    default=None,
    help="Size (N or HxW) for artifacts that take several (checkpoints, dynamic exports). Default: "
    "each artifact's own, else its trained resolution.",
)
@device_option
@ema_option
@nonfinite_option
@json_option
def evaluate(artifacts, data, labels_file, limit, batch_size, img_size, device, ema, allow_nonfinite, as_json):
    """Top-1 / top-5 accuracy of each ARTIFACT (checkpoint, .onnx, .plan) on labelled images.

    \b
    With several artifacts, also the share of images where each one's top-1 class is the first's:
      vimdeploy evaluate vim.pth vim.onnx vim_fp16.onnx vim_int8.onnx --data imagenet/val --limit 5000
    """
    from ..evaluation import evaluate as run_evaluation
    from ..evaluation import format_results

    bars = []

    def progress(label, total):
        from tqdm import tqdm

        bars.append(tqdm(total=total, desc=label, unit="img", file=sys.stderr, leave=False, disable=as_json))
        bar = bars[-1]
        return lambda n: (bar.update(n), bar.n >= total and bar.close())

    try:
        results = run_evaluation(
            artifacts,
            data,
            labels_file=labels_file,
            limit=limit,
            batch_size=batch_size,
            img_size=img_size,
            allow_nonfinite=allow_nonfinite,
            ema=ema,
            device=device,
            progress=progress,
        )
    finally:
        for bar in bars:  # cleared before an error line, which then starts the line
            bar.close()
    emit(results, as_json, lambda r: click.echo(format_results(r)))


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "-o",
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("vimdeploy-demo"),
    show_default=True,
    help="Where the demo writes its files.",
)
@json_option
def demo(checkpoint, out_dir, as_json):
    """Run the whole pipeline once on CHECKPOINT, or on a built-in model if none is given.

    Without a checkpoint, an UNTRAINED Vim-Tiny (fixed seed) is made and used, clearly
    labelled as such: its predictions are meaningless, but every stage runs for real.
    """
    from ..demo import run_demo

    report = run_demo(checkpoint, out_dir, echo=None if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(report, indent=2))
