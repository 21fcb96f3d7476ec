"""Evaluation: digit feature network, FID, precision/recall/density/coverage, toy 2-D metrics.

All image metrics take ``(N, 1, 8, 8)`` tensors in model space [-1, 1]; toy metrics take
``(N, 2)`` point clouds.
"""

from fewstep.evaluation.digits_classifier import (
    DigitsClassifier,
    load_classifier,
    load_default_classifier,
    save_classifier,
    train_and_save_classifier,
    train_classifier,
)
from fewstep.evaluation.fid import extract_features, fid, frechet_distance
from fewstep.evaluation.prdc import prdc
from fewstep.evaluation.scores import evaluate_digits, evaluate_toy
from fewstep.evaluation.toy_metrics import mode_stats, sliced_wasserstein

__all__ = [
    "DigitsClassifier",
    "evaluate_digits",
    "evaluate_toy",
    "extract_features",
    "fid",
    "frechet_distance",
    "load_classifier",
    "load_default_classifier",
    "mode_stats",
    "prdc",
    "save_classifier",
    "sliced_wasserstein",
    "train_and_save_classifier",
    "train_classifier",
]
