"""`info`, `predict`, `infer`, `validate`, `evaluate`, `demo`: checkpoints and artifacts run and compared."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .options import arch_options, device_option, ema_option, emit, json_option, nonfinite_option, progress_echo


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@ema_option
@arch_options
@json_option
def info(checkpoint, ema, overrides, as_json):
    """Describe a Vim checkpoint: variant, parameters, resolution, tokens, file contents."""
    from ..inspection import checkpoint_info
    from ..model.checkpoint import describe_nonfinite

    data = checkpoint_info(checkpoint, ema=ema, **overrides)

    def human(d):
        m = d["model"]
        click.echo(f"{d['file']['path']}  ({d['file']['size_mb']:.1f} MB, sha256 {d['file']['sha256'][:16]}...)")
        click.echo(
            f"  variant      Vim {m['variant']}  (embed {m['embed_dim']}, depth {m['depth']}, "
            f"d_state {m['d_state']}, d_inner {m['d_inner']}, dt_rank {m['dt_rank']})"
        )
        click.echo(f"  parameters   {m['parameters']:,}")
        click.echo(
            f"  resolution   {m['img_size']}x{m['img_size']}, patch {m['patch_size']} stride {m['stride']}, "
            f"grid {m['grid']}x{m['grid']}, {m['tokens']} tokens (class token in the middle, index {m['cls_index']})"
        )
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


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--img-size", default=None, help="Input resolution, N or HxW. Default: the model's own.")
@click.option("-k", "--top", "k", type=int, default=5, show_default=True, help="How many classes to show.")
@device_option
@ema_option
@nonfinite_option
@json_option
def predict(model, images, img_size, k, device, ema, allow_nonfinite, as_json):
    """Classify images: top-k ImageNet classes with probabilities.

    Preprocessing is DeiT's evaluation transform (shorter side to size/0.875 with
    bicubic resampling, center crop, ImageNet mean/std).
    """
    from ..data import load_images, topk
    from ..model import DYNAMIC, parse_img_size
    from ..runtime import open_engine

    size = parse_img_size(img_size)
    if size == DYNAMIC:
        raise click.BadParameter("predict runs at one size (N or HxW).", param_hint="--img-size")
    with open_engine(model, device=device, ema=ema, allow_nonfinite=allow_nonfinite) as engine:
        size = size or engine.input_hw or engine.default_input_size
        logits = engine.run(load_images(images, size))["logits"]
    results = [{"image": str(p), "top": row} for p, row in zip(images, topk(logits, k))]

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
    help="The PyTorch checkpoint the artifact was made from (the reference).",
)
@click.option(
    "--images",
    "images",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Image files or folders to compare on (repeatable). Default: scikit-image's sample photos.",
)
@click.option("--batch", type=int, default=2, show_default=True, help="How many seeded random inputs to add.")
@click.option(
    "--atol", type=float, default=None, help="Max abs error allowed on logits. Default: per precision (fp32: 1e-4)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option(
    "--img-size",
    default=None,
    help="Size to compare at (N or HxW) for an artifact that takes several. Default: the artifact's, "
    "else the checkpoint's.",
)
@device_option
@ema_option
@nonfinite_option
@json_option
def validate(artifact, ref, images, batch, atol, seed, img_size, device, ema, allow_nonfinite, as_json):
    """Compare ARTIFACT with the PyTorch reference on the same inputs; exit 1 beyond tolerance.

    Inputs: seeded random tensors and real photographs. Reports max abs / relative error,
    cosine similarity, top-1 / top-5 agreement, for every output of the artifact.
    """
    from ..validation import format_report, validate_artifact

    report = validate_artifact(
        artifact,
        ref,
        images=images,
        random_batch=batch,
        atol=atol,
        seed=seed,
        ema=ema,
        img_size=img_size,
        allow_nonfinite=allow_nonfinite,
        device=device,
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
@click.option("--limit", type=int, default=None, help="Use only the first N images (in the dataset's sorted order).")
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
