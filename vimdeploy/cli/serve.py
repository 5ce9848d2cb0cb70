"""`serve` and `bench`: an artifact behind Triton, and timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .options import (
    device_option,
    ema_option,
    emit,
    json_option,
    labels_option,
    nonfinite_option,
    preprocessing_options,
)


@click.command("serve")
@click.argument("artifact", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--name", default="vim", show_default=True, help="Model name in the server's URLs.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the HTTP, gRPC and metrics endpoints listen on (0.0.0.0: every interface).",
)
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="Prometheus metrics (/metrics).")
@click.option(
    "--max-batch",
    type=int,
    default=8,
    show_default=True,
    help="Largest batch the dynamic batcher forms (and the largest a request may send).",
)
@click.option(
    "--max-queue-delay-us",
    type=int,
    default=100,
    show_default=True,
    help="How long a request may wait for others to batch with.",
)
@click.option(
    "--instances",
    type=int,
    default=1,
    show_default=True,
    help="Model instances, each its own process with its own engine.",
)
@click.option("--features", is_flag=True, help="Also serve the `features` output.")
@labels_option("Names for top5_labels, one per line. Default: the artifact's own, else ImageNet-1k's for 1000 classes.")
@click.option(
    "--exit-timeout",
    type=int,
    default=30,
    show_default=True,
    help="Seconds in-flight requests get to finish after SIGINT/SIGTERM.",
)
@click.option(
    "--max-image-pixels",
    type=int,
    default=None,
    help="Largest image (width x height, from its header) image_bytes may hold. Default: 40 MP.",
)
@click.option("--max-request-bytes", type=int, default=None, help="Largest HTTP request body. Default: 64 MiB.")
@click.option(
    "--api-key-env",
    metavar="VAR",
    default=None,
    help="Inference needs the header vimdeploy-api-key: <the key>, read from environment variable VAR.",
)
@click.option("--verbose", is_flag=True, help="Print Triton's own log.")
@preprocessing_options
@device_option
@ema_option
@nonfinite_option
@json_option
def serve_cmd(
    artifact,
    name,
    host,
    http_port,
    grpc_port,
    metrics_port,
    max_batch,
    max_queue_delay_us,
    instances,
    features,
    labels,
    exit_timeout,
    max_image_pixels,
    max_request_bytes,
    api_key_env,
    verbose,
    input_size,
    output_name,
    preprocessing_options,
    device,
    ema,
    allow_nonfinite,
    as_json,
):
    """Serve ARTIFACT (checkpoint, .onnx or .plan) with Triton Inference Server until Ctrl-C / SIGTERM.

    \b
    KServe v2 HTTP and gRPC with dynamic batching. Inputs (one per request): `images`
    FP32 N x 3 x S x S, normalised; or `image_bytes` BYTES N x 1, encoded JPEG/PNG,
    preprocessed like `predict`. Outputs: logits, top5_indices, top5_labels,
    top5_scores (and features with --features). Needs `pip install 'vimdeploy[serve]'`.
    Preprocessing and class names are the artifact's own; an ONNX or engine made by another
    tool gets them from --mean, --std (--resize-size, --interpolation), --labels, and its
    class-score output from --output-name where it has several outputs.
    \b
    Example:
      vimdeploy serve vim_t.onnx --max-batch 16 --instances 2
      vimdeploy serve resnet.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --labels names.txt
      curl localhost:8000/v2/health/ready
      python samples/triton/client.py cat.jpg --url localhost:8000
    """
    from ..serving import api_key_from_env, serve

    def ready(info):
        if as_json:
            click.echo(json.dumps({"event": "ready", **info}))
        else:
            click.echo(
                f"serving {info['model']} ({Path(info['artifact']).name}, {info['engine']['backend']}, "
                f"{info['spec']['img_size']}px, max batch {info['max_batch']}, {info['instances']} "
                f"instance(s)): HTTP {info['http']}, gRPC {info['grpc']}, metrics {info['metrics']}. "
                "Ctrl-C to stop."
            )
        sys.stdout.flush()

    summary = serve(
        artifact,
        name=name,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        max_batch=max_batch,
        queue_delay_us=max_queue_delay_us,
        instances=instances,
        features=features,
        labels=labels,
        ema=ema,
        allow_nonfinite=allow_nonfinite,
        exit_timeout_s=exit_timeout,
        on_ready=ready,
        echo=(lambda line: click.echo(line, err=True)) if verbose else None,
        api_key=api_key_from_env(api_key_env) if api_key_env else None,
        input_size=input_size,
        output_name=output_name,
        preprocessing_options=preprocessing_options,
        device=device,
        **{
            k: v
            for k, v in (("max_image_pixels", max_image_pixels), ("max_request_bytes", max_request_bytes))
            if v is not None
        },
    )
    emit(
        {"event": "stopped", **summary},
        as_json,
        lambda s: click.echo(f"stopped (tritonserver exit status {s['server_exit_code']})"),
    )


@click.command("bench")
@click.argument("model", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--model",
    "model_name",
    type=click.Choice(["vim_tiny", "vim_small", "vim_base"]),
    default=None,
    help="An untrained Vim built from VARIANTS (no file needed) instead of MODEL.",
)
@click.option(
    "--scan",
    type=click.Choice(["auto", "fast", "reference", "cpu", "cuda"]),
    default=None,
    help="Scan backend for a checkpoint or --model (vimdeploy.ops). Default: cuda on the GPU, auto on the CPU.",
)
@click.option(
    "--sizes",
    default="224,512,1024",
    show_default=True,
    help="Resolutions; a size off the 16-px patch grid (738) is snapped to the nearest one (736).",
)
@click.option("--batch", "batches", default="1", show_default=True, help="Fixed batch sizes, comma-separated.")
@click.option(
    "--max-batch",
    type=int,
    default=None,
    help="Also run the largest batch that fits, trying N, N/2, ... on CUDA out-of-memory.",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp16", "fp32"]),
    default=None,
    help="Default: fp16 on the GPU, fp32 on the CPU. fp16 Vim keeps the scan parameters and residual in fp32.",
)
@click.option("--cuda-graphs", is_flag=True, help="Replay MODEL as a CUDA graph (not the --compare models).")
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile a checkpoint MODEL (fuses the element-wise work around the scan; compiles per shape).",
)
@click.option(
    "--compare",
    multiple=True,
    type=click.Choice(["deit_tiny", "deit_tiny_eager", "deit_tiny_sdpa"]),
    help="Also run timm's DeiT-Ti (untrained) at each size: deit_tiny = eager and SDPA attention. Needs timm.",
)
@device_option
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--iters", type=int, default=50, show_default=True, help="Timed calls per configuration (at most).")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Time budget per configuration.")
@click.option(
    "--max-forward-s",
    type=float,
    default=10.0,
    show_default=True,
    help="A call slower than this is recorded as too slow and larger sizes of that model are skipped.",
)
@click.option(
    "--profile",
    "profile_size",
    type=int,
    default=None,
    help="Also break MODEL's GPU time down by kernel category (torch.profiler) at this size, batch 1 and max.",
)
@click.option(
    "--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write all results as JSON."
)
@click.option(
    "--plot-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write bench_throughput.png and bench_memory.png (needs matplotlib).",
)
@json_option
def bench_cmd(
    model,
    model_name,
    scan,
    sizes,
    batches,
    max_batch,
    dtype,
    cuda_graphs,
    compile_,
    compare,
    device,
    warmup,
    iters,
    seconds,
    max_forward_s,
    profile_size,
    json_out,
    plot_dir,
    as_json,
):
    """Throughput, batch-1 latency and peak GPU memory over resolutions and batch sizes.

    \b
    Examples:
      vimdeploy bench --model vim_tiny --cuda-graphs --sizes 224,512,1024 --batch 1 --max-batch 128
      vimdeploy bench vim_t.pth --scan fast --compare deit_tiny --json-out bench.json --plot-dir plots/
      vimdeploy bench vim_t.onnx --sizes 224
    """
    from ..bench import main_bench

    result = main_bench(
        model=model,
        model_name=model_name,
        scan=scan,
        sizes=sizes,
        batches=batches,
        max_batch=max_batch,
        dtype=dtype,
        cuda_graphs=cuda_graphs,
        compile=compile_,
        compare=compare,
        device=device,
        warmup=warmup,
        iters=iters,
        seconds=seconds,
        max_forward_s=max_forward_s,
        profile_size=profile_size,
        json_out=json_out,
        plot_dir=plot_dir,
        progress=not as_json,
    )
    from ..bench import format_table

    written = [str(json_out)] if json_out is not None else []
    emit(
        result,
        as_json,
        lambda r: click.echo(format_table(r) + "".join(f"\nwrote {p}" for p in [*written, *(r.get("plots") or [])])),
    )
