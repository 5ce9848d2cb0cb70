"""The Triton Python backend model: runs inside Triton's backend stub process, never elsewhere.

The model repository's `model.py` (vimdeploy/triton.py writes it) re-exports `TritonPythonModel`
from here. Each model instance (`--instances`) is its own stub process with its own engine;
Triton's dynamic batcher hands `execute` a list of requests, which become one engine call.
Every request gets its own response: a bad one is answered with INVALID_ARG (HTTP 400,
gRPC INVALID_ARGUMENT) and does not fail the others batched with it.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the stub; not an installable package

from ..errors import VimdeployError
from ..triton import SETTINGS_KEY
from .handler import Handler, ModelSpec


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _error(message: str, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args):
        from PIL import Image

        from ..data import class_names
        from ..preprocessing import from_json
        from ..runtime import open_engine

        config = json.loads(args["model_config"])
        settings = json.loads(config["parameters"][SETTINGS_KEY]["string_value"])
        spec = ModelSpec.from_dict(settings["spec"])
        engine = open_engine(settings["artifact"], **settings.get("engine_options", {}))
        labels = settings.get("label_names") or class_names(spec.num_classes)
        recipe = from_json(settings["preprocessing"], "the serve settings")
        max_pixels = int(settings["max_image_pixels"])
        # PIL's own header check (DecompressionBombError, at twice this) must not refuse what we allow
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)
        self.handler = Handler(engine, spec, labels, max_image_pixels=max_pixels, recipe=recipe)
        # One call before the model reports ready, so that no client pays for lazy setup.
        zeros = np.zeros((1, 3, spec.img_size, spec.img_size), np.float32)
        self.handler.answer([self.handler.prepare(zeros, None)], features=spec.feature_dim is not None)

    def execute(self, requests):
        responses = [None] * len(requests)
        prepared = []  # (position, array, requested output names)
        for i, request in enumerate(requests):
            try:
                x = self.handler.prepare(_input(request, "images"), _input(request, "image_bytes"))
            except VimdeployError as e:
                responses[i] = _error(str(e), pb_utils.TritonError.INVALID_ARG)
                continue
            prepared.append((i, x, set(request.requested_output_names())))
        if not prepared:
            return responses
        try:
            results = self.handler.answer(
                [x for _, x, _ in prepared], features=any("features" in wanted for _, _, wanted in prepared)
            )
        except VimdeployError as e:
            results = (str(e), pb_utils.TritonError.INVALID_ARG)
        except Exception as e:  # noqa: BLE001 - answer every request, keep the instance serving
            pb_utils.Logger.log_error(f"vimdeploy: engine call failed: {type(e).__name__}: {e}")
            results = (f"the engine failed: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL)
        for n, (i, _, wanted) in enumerate(prepared):
            if isinstance(results, tuple):
                responses[i] = _error(*results)
            else:
                tensors = [pb_utils.Tensor(name, value) for name, value in results[n].items() if name in wanted]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self):
        close = getattr(self.handler.engine, "close", None)
        if close is not None:
            close()
