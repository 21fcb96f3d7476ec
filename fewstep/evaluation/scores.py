"""One-call evaluation of generated digits, other images and toy point clouds (see METHODS.md
section 7 and :mod:`fewstep.evaluation.features`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fewstep.evaluation.features import FeatureSpace
from fewstep.evaluation.fid import extract_features, frechet_distance
from fewstep.evaluation.prdc import prdc
from fewstep.evaluation.toy_metrics import mode_stats, sliced_wasserstein


def evaluate_digits(samples: Tensor, labels_requested: Tensor | None, reference: Tensor,
                    classifier: nn.Module, k: int = 5,
                    batch_size: int = 1024) -> dict[str, float]:
    """Score generated digits against a reference set with a fixed feature classifier.

    Args:
        samples: ``(M, 1, 8, 8)`` generated images in [-1, 1].
        labels_requested: ``(M,)`` classes the samples were conditioned on, or ``None``
            (unconditional; ``class_accuracy`` is then NaN).
        reference: ``(N, 1, 8, 8)`` images in [-1, 1], e.g. the held-out split or the teacher's
            samples.
        classifier: a network with ``features(x) -> (B, d)`` and ``forward(x) -> logits``
            (e.g. :func:`fewstep.evaluation.digits_classifier.load_default_classifier`).
        k: neighbourhood size for PRDC.

    Returns:
        ``{"fid", "precision", "recall", "density", "coverage", "class_accuracy"}``.
    """
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or inf")
    f_ref = extract_features(classifier, reference, batch_size)
    f_gen = extract_features(classifier, samples, batch_size)
    out = {"fid": frechet_distance(f_ref, f_gen), **prdc(f_ref, f_gen, k=k)}
    if labels_requested is None:
        out["class_accuracy"] = float("nan")
    else:
        with torch.no_grad():
            was_training = classifier.training
            classifier.eval()
            pred = torch.cat([classifier(samples[i:i + batch_size]).argmax(1)
                              for i in range(0, len(samples), batch_size)])
            classifier.train(was_training)
        out["class_accuracy"] = (pred == labels_requested.to(pred.device)).double().mean().item()
    return out


def evaluate_images(samples: Tensor, labels_requested: Tensor | None, reference: Tensor,
                    space: FeatureSpace, k: int = 5, num_projections: int = 256,
                    seed: int = 0) -> dict[str, float]:
    """Score generated images ``(M, C, H, W)`` against ``reference (N, C, H, W)`` (both in
    [-1, 1]) in a :class:`FeatureSpace`.

    Returns ``{"fd", "swd", "precision", "recall", "density", "coverage"}`` plus
    ``class_accuracy`` when ``space.classifier`` exists and ``labels_requested`` is given:
    ``fd`` and PRDC in the feature space, ``swd`` (sliced W2, ``num_projections`` fixed
    directions) always on the flattened pixels.
    """
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or inf")
    f_ref = space.features(reference)
    f_gen = space.features(samples)
    gen = torch.Generator().manual_seed(seed)
    out = {"fd": frechet_distance(f_ref, f_gen),
           "swd": sliced_wasserstein(samples.flatten(1).cpu(), reference.flatten(1).cpu(),
                                     num_projections, p=2.0, generator=gen),
           **prdc(f_ref, f_gen, k=k)}
    if space.classifier is not None and labels_requested is not None:
        with torch.no_grad():
            clf = space.classifier
            was_training = clf.training
            clf.eval()
            pred = torch.cat([clf(samples[i:i + 1024]).argmax(1)
                              for i in range(0, len(samples), 1024)])
            clf.train(was_training)
        out["class_accuracy"] = (pred == labels_requested.to(pred.device)).double().mean().item()
    return out


def evaluate_toy(samples: Tensor, reference: Tensor, name: str, num_projections: int = 256,
                 seed: int = 0, radius: float | None = None,
                 min_share: float = 0.25) -> dict[str, float]:
    """Score ``samples (M, 2)`` against ``reference (N, 2)`` of toy ``name``.

    Returns ``{"swd", "mode_coverage", "quality"}``: sliced W2 with ``num_projections``
    directions from a CPU generator seeded with ``seed`` (same directions on every call), and
    :func:`fewstep.evaluation.toy_metrics.mode_stats`.
    """
    gen = torch.Generator().manual_seed(seed)
    swd = sliced_wasserstein(samples, reference, num_projections, p=2.0, generator=gen)
    return {"swd": swd, **mode_stats(samples, name, radius, min_share)}
