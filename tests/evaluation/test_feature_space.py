"""Feature-space selection: the digits classifier only for digits, pixels for your own images,
a classifier trained on your labels or a named builder on request; class accuracy only with a
classifier for the data's classes; every evaluation records its feature space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fewstep.app.cli import app
from fewstep.data.problem import get_problem
from fewstep.errors import CheckpointError, ConfigError
from fewstep.evaluation.evaluate import evaluate_samplers
from fewstep.evaluation.features import DIGITS_FEATURES, resolve_feature_space
from fewstep.evaluation.image_classifier import (
    load_image_classifier,
    save_image_classifier,
    train_image_classifier,
)
from fewstep.evaluation.scores import evaluate_images
from fewstep.networks.registry import network_denoiser


def _two_class_npz(path: Path, n: int = 80, shape: tuple[int, ...] = (3, 8, 8)) -> Path:
    """Class 0: bright left half; class 1: bright right half (plus noise), in [0, 1]."""
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape)).astype(np.float32) * 0.2
    y = np.arange(n) % 2
    w = shape[-1] // 2
    x[y == 0, :, :, :w] += 0.7
    x[y == 1, :, :, w:] += 0.7
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def user_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(_two_class_npz(tmp_path_factory.mktemp("fs") / "two.npz"))


@pytest.fixture(scope="module")
def classifier_file(user_data: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, record = train_image_classifier(user_data, steps=80, batch_size=32)
    assert record["heldout_accuracy"] >= 0.75, record
    path = tmp_path_factory.mktemp("clf") / "clf.safetensors"
    save_image_classifier(model, path, record)
    return path


def test_auto_selection() -> None:
    assert resolve_feature_space(get_problem("digits")).name == DIGITS_FEATURES
    assert resolve_feature_space(get_problem("digits")).classifier is not None
    assert resolve_feature_space(get_problem("moons")).name == "points"


def test_user_data_defaults_to_pixels(user_data: str) -> None:
    fs = resolve_feature_space(get_problem(user_data))
    assert fs.name == "pixels" and fs.classifier is None
    x = torch.rand(5, 3, 8, 8)
    assert torch.equal(fs.features(x), x.flatten(1))
    with pytest.raises(ConfigError, match="digits classifier takes"):
        resolve_feature_space(get_problem(user_data), "digits_classifier")
    with pytest.raises(ConfigError, match="2-D toy data"):
        resolve_feature_space(get_problem("moons"), "pixels")


def test_trained_classifier_and_class_accuracy(user_data: str, classifier_file: Path) -> None:
    prob = get_problem(user_data)
    fs = resolve_feature_space(prob, f"classifier:{classifier_file}")
    assert fs.classifier is not None and fs.features(torch.zeros(2, 3, 8, 8)).shape == (2, 128)
    ref, _ = prob.split("heldout")
    x, ytr = prob.split("train")
    m = evaluate_images(x, ytr, ref, fs)
    assert m["class_accuracy"] > 0.75 and {"fd", "swd", "precision", "recall", "density",
                                           "coverage"} <= set(m)
    assert "class_accuracy" not in evaluate_images(x, ytr, ref, resolve_feature_space(prob))
    # the same classifier on data with other classes: features yes, class accuracy no
    other = _two_class_npz(classifier_file.parent / "three.npz")
    d = np.load(other)
    np.savez(other, x=d["x"], y=np.arange(80) % 3)
    fs3 = resolve_feature_space(get_problem(str(other)), f"classifier:{classifier_file}")
    assert fs3.classifier is None
    with pytest.raises(ConfigError, match="takes images of shape"):
        resolve_feature_space(get_problem("digits"), f"classifier:{classifier_file}")
    with pytest.raises(CheckpointError, match="not a fewstep image classifier"):
        load_image_classifier(Path(__file__).parent.parent.parent / "fewstep" / "assets" /
                              "digits_classifier.safetensors")


def test_builder(user_data: str) -> None:
    fs = resolve_feature_space(get_problem(user_data),
                               "builder:tests.evaluation.feature_builders:pooled")
    assert fs.name == "builder:tests.evaluation.feature_builders:pooled" and fs.classifier is None
    assert fs.features(torch.zeros(4, 3, 8, 8)).shape == (4, 48)
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_feature_space(get_problem(user_data), "builder:no_such_mod:fn")


def test_evaluate_samplers_records_the_feature_space(user_data: str) -> None:
    prob = get_problem(user_data)
    den = network_denoiser({"type": "resmlp", "data_shape": [3, 8, 8], "hidden": 32, "depth": 1,
                          "emb": 16, "num_classes": 2}, null_class=2).eval()
    metrics, _ = evaluate_samplers(prob, ["teacher_8", "teacher_2"], den, num_samples=40)
    for m in metrics.values():
        assert m["feature_space"] == "pixels"
        assert "fd" in m and "fd_vs_teacher" in m and "swd" in m
        assert "fid" not in m and "class_accuracy" not in m
    digits, _ = evaluate_samplers(get_problem("digits"), ["teacher_2"],
                                  network_denoiser({"type": "resmlp", "data_shape": [1, 8, 8],
                                                  "hidden": 32, "depth": 1, "emb": 16,
                                                  "num_classes": 10}, null_class=10).eval(),
                                  num_samples=40)
    assert digits["teacher_2"]["feature_space"] == DIGITS_FEATURES
    assert "fid" in digits["teacher_2"] and "class_accuracy" in digits["teacher_2"]


def test_classifier_train_cli(user_data: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["classifier", "train", "--data", user_data, "--out",
                                 str(tmp_path / "c.safetensors"), "--steps", "20"])
    assert r.exit_code == 0, r.output
    assert load_image_classifier(tmp_path / "c.safetensors").config.num_classes == 2
    np.savez(tmp_path / "nolab.npz", x=np.zeros((20, 1, 8, 8), np.float32))
    r = CliRunner().invoke(app, ["classifier", "train", "--data", str(tmp_path / "nolab.npz"),
                                 "--out", str(tmp_path / "d.safetensors")])
    assert r.exit_code == 2 and "has no labels" in r.output
