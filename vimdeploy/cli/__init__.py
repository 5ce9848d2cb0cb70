"""The `vimdeploy` command line: parse, call the library, print. Nothing else lives here.

One module per group of commands; `options` holds what they share (the one-line error
handler, --json printing, common options, progress output).
"""

from __future__ import annotations

import click

from .. import __version__
from . import export, models, serve, tensorrt
from .options import CONTEXT, FriendlyGroup

__all__ = ["main"]


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


# In the order `vimdeploy --help` lists them (alphabetical in click).
for _command in (
    models.inspect,
    models.info,
    models.predict,
    models.infer,
    export.export_cmd,
    export.convert,
    models.validate,
    models.evaluate,
    models.demo,
    tensorrt.plugin,
    tensorrt.build_cmd,
    tensorrt.triton_repo,
    serve.serve_cmd,
    serve.bench_cmd,
):
    main.add_command(_command)
