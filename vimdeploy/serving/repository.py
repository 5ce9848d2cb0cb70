"""The model repository `vimdeploy serve` hands to Triton: one Python-backend model.

    REPO/<name>/config.pbtxt   backend "python", inputs/outputs from the ModelSpec, dynamic
                               batching, KIND_CPU instances, the settings as a parameter
    REPO/<name>/1/model.py     re-exports vimdeploy.serving.backend.TritonPythonModel
"""

from __future__ import annotations

import json
from pathlib import Path

from ..triton import instance_group, pbtxt, tensor
from .handler import ModelSpec

#: the config.pbtxt parameter carrying the backend's settings (JSON)
SETTINGS_KEY = "vimdeploy"

MODEL_PY = '''"""Written by `vimdeploy serve`: the model is vimdeploy/serving/backend.py."""
import sys

# The same vimdeploy as the `vimdeploy serve` that wrote this file, whatever the stub's sys.path.
sys.path.insert(0, {root!r})

from vimdeploy.serving.backend import TritonPythonModel  # noqa: E402,F401
'''


def config_text(name: str, spec: ModelSpec, settings: dict, max_batch: int, queue_delay_us: int,
                instances: int) -> str:
    config = {
        "name": name,
        "backend": "python",
        "max_batch_size": int(max_batch),
        "input": [tensor(t.name, t.dtype, t.dims, optional=t.optional) for t in spec.inputs()],
        "output": [tensor(t.name, t.dtype, t.dims) for t in spec.outputs()],
        "dynamic_batching": {"max_queue_delay_microseconds": int(queue_delay_us)},
        # KIND_CPU: each instance is a stub process; one running a .plan engine still uses its GPU.
        "instance_group": instance_group(instances, "KIND_CPU"),
        "parameters": [{"key": SETTINGS_KEY, "value": {"string_value": json.dumps(settings, sort_keys=True)}}],
    }
    return "# Written by `vimdeploy serve`.\n" + "\n".join(pbtxt(config)) + "\n"


def write_model(repo: Path, name: str, spec: ModelSpec, settings: dict, max_batch: int, queue_delay_us: int,
                instances: int) -> Path:
    """Write REPO/<name>/ for Triton; returns the model folder."""
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config_text(name, spec, settings, max_batch, queue_delay_us, instances))
    root = str(Path(__file__).resolve().parents[2])
    (folder / "1" / "model.py").write_text(MODEL_PY.format(root=root))
    return folder
