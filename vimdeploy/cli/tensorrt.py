"""`build`, `triton-repo` and `plugin`: TensorRT engines, Triton, the native libraries."""

from __future__ import annotations

from pathlib import Path

import click

from .export import tensorrt_recipe
from .options import emit, json_option, labels_option, progress_echo


@click.group()
def plugin():
    """The native BiSelectiveScan libraries: CUDA kernel and TensorRT plugin (plugins/, CMake + nvcc), CPU kernel."""


@plugin.command("build")
@click.option(
    "--build-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="CMake build folder. Default: $VIMDEPLOY_PLUGIN_BUILD_DIR, else plugins/build in a checkout, "
    "else ~/.cache/vimdeploy/plugins-<version>-<hash> (installed package).",
)
@click.option(
    "--cuda-archs", default=None, help='CUDA architectures, e.g. "87" for Jetson Orin. Default: 80;86;87;89;90.'
)
@click.option(
    "--tensorrt-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A TensorRT install (include/, lib/). Without it only the kernel library is built.",
)
@click.option("-j", "--jobs", type=int, default=None, help="Parallel compile jobs.")
@json_option
def plugin_build(build_dir, cuda_archs, tensorrt_root, jobs, as_json):
    """Configure and build plugins/ and print the library paths."""
    from ..ops.build import build

    paths = build(
        build_dir=build_dir, cuda_archs=cuda_archs, tensorrt_root=tensorrt_root, jobs=jobs, progress=progress_echo()
    )
    emit({k: str(v) for k, v in paths.items()}, as_json, lambda d: [click.echo(f"{k:20s} {v}") for k, v in d.items()])


@plugin.command("path")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@json_option
def plugin_path(build_dir, as_json):
    """Print the paths of the built libraries (CUDA kernel, TensorRT plugins, CPU kernel); exit 1 if none is built."""
    from ..errors import ArtifactError
    from ..ops.native import cpu_library_path, library_paths

    paths = library_paths(build_dir)
    if "cpu" not in paths and cpu_library_path() is not None:
        paths["cpu"] = cpu_library_path()
    if not paths:
        raise ArtifactError("no plugin library is built yet: run `vimdeploy plugin build`.")
    emit({k: str(v) for k, v in paths.items()}, as_json, lambda d: [click.echo(f"{k:20s} {v}") for k, v in d.items()])


@click.command("build")
@click.argument("model", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The engine to write (.plan), plus OUTPUT.json (versions, GPU, profile, plugin): both atomically.",
)
@click.option(
    "--fp16",
    "precision",
    flag_value="fp16",
    default=None,
    help="FP16 engine: an fp32 ONNX is converted first (as `vimdeploy convert --precision fp16`).",
)
@click.option(
    "--int8",
    "precision",
    flag_value="int8",
    help="INT8 (Q/DQ) engine from an fp32 ONNX, with the tensorrt-int8 preset's recipe; needs --calib.",
)
@click.option(
    "--calib",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="INT8: a folder of calibration images.",
)
@click.option("--calib-limit", type=int, default=None, help="INT8: use at most this many calibration images.")
@click.option(
    "--plugin",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="TensorRT plugin library. Default: libvimdeploy_trt_plugin.so from `vimdeploy plugin build`.",
)
@click.option("--batch", default=None, help="Batch profile MIN:OPT:MAX (dynamic-batch ONNX). Default: 1:8:32.")
@click.option(
    "--img-size",
    default=None,
    help="Resolution profile for an `--img-size dynamic` ONNX: MIN:OPT:MAX, each N or HxW "
    "(e.g. 224:384:1248 or 224x224:384x640:1248x1248).",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Tactic timing cache file: read if present, updated after the build (faster rebuilds).",
)
@click.option("--workspace-mb", type=int, default=None, help="Builder workspace limit in MiB. Default: TensorRT's.")
@click.option(
    "--opt-level",
    type=click.IntRange(0, 5),
    default=None,
    help="builder_optimization_level 0-5 (TensorRT's default 3; higher builds longer, may run faster).",
)
@click.option("--tf32", is_flag=True, help="Allow TF32 for fp32 matmuls (faster on Ampere+, ~1e-3 less exact).")
@click.option("--force", is_flag=True, help="Replace OUTPUT (and its .json) if they exist.")
@click.option("--verbose", is_flag=True, help="Print TensorRT's verbose log.")
@json_option
def build_cmd(
    model,
    output,
    precision,
    calib,
    calib_limit,
    plugin,
    batch,
    img_size,
    timing_cache,
    workspace_mb,
    opt_level,
    tf32,
    force,
    verbose,
    as_json,
):
    """Build a TensorRT engine from a vimdeploy ONNX (strongly typed: the precision is the ONNX's).

    \b
    Examples:
      vimdeploy build vim_t.onnx -o vim_t.plan --batch 1:8:32 --timing-cache trt.cache
      vimdeploy build vim_t.onnx --fp16 -o vim_t_fp16.plan
    """
    from ..tensorrt.builder import build_engine

    summary = build_engine(
        model,
        output,
        precision=precision,
        convert_options=tensorrt_recipe(precision, calib=calib, calib_limit=calib_limit) if precision else None,
        plugin=plugin,
        batch=batch,
        img_size=img_size,
        timing_cache=timing_cache,
        workspace_mb=workspace_mb,
        opt_level=opt_level,
        tf32=tf32,
        force=force,
        progress=not as_json,
        verbose=verbose,
        echo=None if as_json else progress_echo(),
    )
    emit(
        summary,
        as_json,
        lambda s: click.echo(
            f"wrote {s['output']} ({s['size_mb']:.1f} MB, {s['precision']}, TensorRT {s['tensorrt']}, {s['gpu']}) "
            f"and {s['sidecar']}"
        ),
    )


@click.command("triton-repo")
@click.argument("artifact", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    "repo",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The model repository folder (created if missing).",
)
@click.option("--name", default="vim", show_default=True, help="Model name (its folder in the repository).")
@click.option(
    "--max-batch",
    type=int,
    default=None,
    help="Triton max_batch_size. Default: the engine's max batch; 8 for a dynamic-batch ONNX. Needed for an "
    "engine without a sidecar.",
)
@click.option("--input-size", default=None, help="Input side N or HxW: an engine without a sidecar, a dynamic ONNX.")
@click.option("--num-classes", type=int, default=None, help="Width of the class scores: an engine without a sidecar.")
@click.option("--input-name", default=None, help="The image input. Default: the only input (images for an engine).")
@click.option("--output-name", default=None, help="The output of class scores. Default: logits, else the only output.")
@click.option(
    "--op-library",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="vimdeploy's ONNX Runtime op library, for a plugin-flavor ONNX (Triton's model_operations).",
)
@click.option(
    "--queue-delay-us", type=int, default=100, show_default=True, help="dynamic_batching max_queue_delay_microseconds."
)
@click.option("--instances", type=int, default=1, show_default=True, help="Engine instances per GPU.")
@click.option("--gpus", default=None, help="GPU ids the instances go on, e.g. 0,1. Default: every GPU.")
@labels_option("Class names, one per line. Default: the artifact's own, else ImageNet-1k's for 1000 classes.")
@click.option("--no-warmup", is_flag=True, help="Leave out model_warmup (random batches of 1 and the max batch).")
@click.option("--force", is_flag=True, help="Replace the model folder if it exists.")
@json_option
def triton_repo(
    artifact,
    repo,
    name,
    max_batch,
    input_size,
    num_classes,
    input_name,
    output_name,
    op_library,
    queue_delay_us,
    instances,
    gpus,
    labels,
    no_warmup,
    force,
    as_json,
):
    """Write a Triton Inference Server model repository for ARTIFACT: a TensorRT engine or an ONNX.

    \b
    Any engine or ONNX, also one made by another tool: what it does not carry comes from options.
      vimdeploy triton-repo vim_t.plan -o models/
      vimdeploy triton-repo resnet.onnx -o models/ --name resnet --max-batch 16 --labels names.txt
      vimdeploy triton-repo trtexec.plan -o models/ --input-size 224 --max-batch 8 --num-classes 1000
    """
    from ..errors import InputError
    from ..preprocessing import parse_size
    from ..triton import write_triton_repo

    try:
        gpu_ids = [int(g) for g in gpus.split(",")] if gpus else None
    except ValueError:
        raise InputError(f"--gpus takes comma-separated GPU ids, e.g. 0,1; got {gpus!r}.") from None
    info = write_triton_repo(
        artifact,
        repo,
        name=name,
        max_batch=max_batch,
        queue_delay_us=queue_delay_us,
        instances=instances,
        force=force,
        gpus=gpu_ids,
        labels=labels,
        warmup=not no_warmup,
        input_name=input_name,
        output_name=output_name,
        input_size=parse_size(input_size, "--input-size"),
        num_classes=num_classes,
        op_library=op_library,
    )
    emit(
        info,
        as_json,
        lambda i: click.echo(
            f"wrote {i['model']} ({i['platform']}, input {i['input']}, class scores {i['logits']}, max_batch_size "
            f"{i['max_batch_size']}{', labels.txt' if i['labels'] else ''}) and {i['repository']}/README.md "
            "(how to start tritonserver)"
        ),
    )
