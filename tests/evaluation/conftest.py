"""Shared fixtures: the shipped classifier and the digit splits with their features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from fewstep.data import load_digits_split
from fewstep.evaluation import extract_features, load_default_classifier
from fewstep.evaluation.digits_classifier import DigitsClassifier


def box_blur(x: Tensor) -> Tensor:
    """3x3 box blur of ``(N, 1, 8, 8)`` images (edge-replicated)."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


@pytest.fixture(scope="session")
def classifier() -> DigitsClassifier:
    return load_default_classifier()


@pytest.fixture(scope="session")
def digits() -> dict[str, Tensor]:
    xtr, ytr = load_digits_split("train")
    xte, yte = load_digits_split("heldout")
    return {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}


@pytest.fixture(scope="session")
def bad_sets(digits: dict[str, Tensor]) -> dict[str, Tensor]:
    """Degraded stand-ins for generated samples, each the size of the held-out split."""
    xte = digits["xte"]
    g = torch.Generator().manual_seed(0)
    return {
        "blurred": box_blur(xte),
        "noise": torch.randn(xte.shape, generator=g).clamp(-1.0, 1.0),
        "collapsed": xte[:1].expand_as(xte).clone(),
    }


@pytest.fixture(scope="session")
def features(classifier: DigitsClassifier, digits: dict[str, Tensor],
             bad_sets: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {"train": extract_features(classifier, digits["xtr"]),
           "heldout": extract_features(classifier, digits["xte"])}
    out.update({k: extract_features(classifier, v) for k, v in bad_sets.items()})
    return out
