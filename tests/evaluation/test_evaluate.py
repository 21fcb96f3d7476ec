"""End-to-end ``evaluate_digits`` on real and degraded digits."""

from __future__ import annotations

import math

import pytest
import torch

from fewstep.evaluation import evaluate_digits

KEYS = {"fid", "precision", "recall", "density", "coverage", "class_accuracy"}


def test_evaluate_digits_real_vs_blurred(classifier, digits, bad_sets) -> None:
    real = evaluate_digits(digits["xtr"], digits["ytr"], digits["xte"], classifier)
    blur = evaluate_digits(bad_sets["blurred"], digits["yte"], digits["xte"], classifier)
    assert set(real) == KEYS
    assert real["class_accuracy"] > 0.98 > blur["class_accuracy"]
    assert real["fid"] < blur["fid"]
    # wrong requested labels -> class accuracy drops
    wrong = evaluate_digits(digits["xtr"], (digits["ytr"] + 1) % 10, digits["xte"], classifier)
    assert wrong["class_accuracy"] < 0.05


def test_evaluate_digits_unconditional_and_nan_guard(classifier, digits) -> None:
    out = evaluate_digits(digits["xtr"][:100], None, digits["xte"], classifier)
    assert math.isnan(out["class_accuracy"])
    bad = digits["xtr"][:10].clone()
    bad[0, 0, 0, 0] = torch.nan
    with pytest.raises(ValueError):
        evaluate_digits(bad, None, digits["xte"], classifier)
