"""What every command shares: the one-line error handler, --json printing, common options,
batch parsing and progress output."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from ..errors import VimdeployError
from ..extras import install_hint

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class FriendlyGroup(click.Group):
    """Turns expected failures (VimdeployError, an optional dependency that is not installed)
    into one clear line and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VimdeployError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except ModuleNotFoundError as e:
            hint = install_hint(e.name)
            if hint is None:
                raise
            click.echo(f"error: {hint}", err=True)
            sys.exit(1)
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
nonfinite_option = click.option(
    "--allow-nonfinite", is_flag=True, help="Load a checkpoint whose weights hold NaN or inf (refused by default)."
)

device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the artifact runs. auto: CUDA where the artifact's runtime has it, else the CPU.",
)


def arch_options(fn):
    """Overrides for what a checkpoint's shapes cannot tell."""

    @click.option(
        "--stride",
        type=int,
        default=None,
        help="Patch stride (16, or 8 for the long-sequence models). Default: inferred.",
    )
    @click.option(
        "--trained-size",
        type=int,
        default=None,
        help="Resolution the checkpoint was trained at. Default: inferred from its position embedding.",
    )
    @functools.wraps(fn)
    def wrapper(*args, stride, trained_size, **kwargs):
        return fn(*args, overrides={"stride": stride, "img_size": trained_size}, **kwargs)

    return wrapper


class BatchType(click.ParamType):
    """--batch: a positive integer or 'dynamic'."""

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


def progress_echo():
    """Progress lines with elapsed time, on stderr so that stdout stays clean for --json."""
    import time

    start = time.perf_counter()
    return lambda msg: click.echo(f"[{time.perf_counter() - start:6.1f}s] {msg}", err=True)


def progress_bar(label: str):
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


def _numbers(value: str | None, option: str):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"takes 3 numbers separated by commas; got {value!r}", param_hint=option) from None


def preprocessing_options(fn):
    """What an artifact made elsewhere may not carry (vimdeploy/preprocessing.py); each replaces the
    artifact's own. Passes `input_size`, `output_name` and `preprocessing_options` (a dict)."""
    return _recipe_options(
        click.option(
            "--input-size", default=None, help="Input side N (or HxW) for an artifact that takes several sizes."
        )(fn)
    )


def _recipe_options(fn):
    from ..preprocessing import INTERPOLATIONS

    @click.option("--mean", default=None, help="Per-channel mean of pixels scaled to 0..1, e.g. 0.485,0.456,0.406.")
    @click.option("--std", default=None, help="Per-channel std, e.g. 0.229,0.224,0.225.")
    @click.option("--resize-size", default=None, help="N or HxW the image is scaled to cover before the center crop.")
    @click.option("--interpolation", type=click.Choice(list(INTERPOLATIONS)), default=None, help="Resize filter.")
    @click.option(
        "--output-name", default=None, help="The output holding class scores. Default: logits, else the only output."
    )
    @functools.wraps(fn)
    def wrapper(*args, mean, std, resize_size, interpolation, **kwargs):
        options = {
            "mean": _numbers(mean, "--mean"),
            "std": _numbers(std, "--std"),
            "resize_size": resize_size,
            "interpolation": interpolation,
        }
        return fn(*args, preprocessing_options={k: v for k, v in options.items() if v is not None}, **kwargs)

    return wrapper


#: the preprocessing options without --input-size, for a command that has its own size option
recipe_options = _recipe_options


def labels_option(help_text: str):
    """--labels FILE: class names, one per line."""
    return click.option(
        "--labels", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None, help=help_text
    )
