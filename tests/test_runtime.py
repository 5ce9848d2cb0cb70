"""`Engine.run`: the checks and the batching every backend gets, on a fake backend."""

from __future__ import annotations

import numpy as np
import pytest

from vimdeploy.errors import InputError
from vimdeploy.runtime import Engine


class Recorder(Engine):
    """Logits = the mean pixel of each image, repeated; records every batch size it is called with."""

    outputs = ["logits", "features"]

    def __init__(self, batch_range=None, input_hw=None, grid=None):
        self.batch_range, self.input_hw, self.grid = batch_range, input_hw, grid
        self.calls, self.closed = [], False

    def _infer(self, images, names):
        self.calls.append(len(images))
        mean = images.reshape(len(images), -1).mean(-1, keepdims=True)
        return {n: np.repeat(mean, 3 if n == "logits" else 2, axis=1) for n in names}

    def close(self):
        self.closed = True


def batch(n, size=32):
    return np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((n, 3, size, size), np.float32)


@pytest.mark.parametrize("n, calls", [(7, [4, 3]), (8, [4, 4]), (1, [2]), (9, [4, 4, 2])])
def test_chunks_of_max_and_padding_to_min(n, calls):
    engine = Recorder(batch_range=(2, 4))
    out = engine.run(batch(n), features=True)
    assert engine.calls == calls
    assert out["logits"].shape == (n, 3) and out["features"].shape == (n, 2)
    np.testing.assert_array_equal(out["logits"][:, 0], np.arange(n))  # image order kept, padding dropped


def test_any_batch_is_one_call():
    engine = Recorder()
    assert engine.run(batch(5))["logits"].shape == (5, 3) and engine.calls == [5]


@pytest.mark.parametrize(
    "images, needle",
    [
        (np.zeros((2, 3, 32)), "NCHW"),
        (np.zeros((2, 1, 32, 32)), "NCHW"),
        (np.zeros((0, 3, 32, 32)), "empty"),
        (np.zeros((1, 3, 32, 32), np.int64), "float32"),
        ([[1.0]], "NCHW"),
    ],
)
def test_checks_before_any_call(images, needle):
    engine = Recorder()
    with pytest.raises(InputError, match=needle):
        engine.run(images)
    assert engine.calls == []


def test_size_and_grid_checks():
    with pytest.raises(InputError, match="takes 32x32"):
        Recorder(input_hw=(32, 32)).run(batch(1, 48))
    with pytest.raises(InputError, match="patch grid"):
        Recorder(grid=(16, 16)).run(batch(1, 40))
    assert Recorder(grid=(16, 16)).run(batch(1, 48))["logits"].shape == (1, 3)


def test_unknown_output_is_refused():
    with pytest.raises(InputError, match="no output feature_map"):
        Recorder().run(batch(1), outputs=["logits", "feature_map"])


def test_context_manager_closes():
    with Recorder() as engine:
        engine.run(batch(1))
    assert engine.closed
