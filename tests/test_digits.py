"""The small Vim trained on scikit-learn's digits: the model that makes accuracy measurable."""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from vimdeploy import digits  # noqa: E402


def test_split_is_fixed_and_disjoint():
    _, train_labels = digits.digit_images("train")
    x, test_labels = digits.digit_batch("test")
    assert x.shape == (450, 3, 32, 32) and x.dtype == np.float32
    assert len(train_labels) + len(test_labels) == 1797
    assert np.bincount(test_labels).min() >= 40  # stratified: every digit about 45 times


def test_committed_weights_are_accurate_through_the_runtime():
    """Through `open_engine` like every artifact; 96.9% was measured when the weights were trained."""
    result = digits.evaluate(digits.WEIGHTS)
    assert result["images"] == 450
    assert result["accuracy"] >= 95.0, result


def test_calibration_images_come_from_the_training_split(tmp_path):
    paths = digits.write_calibration_images(tmp_path, count=8)
    assert len(paths) == 8 and all(p.suffix == ".png" for p in paths)
