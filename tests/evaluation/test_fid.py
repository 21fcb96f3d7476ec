"""FID on classifier features: ranking of degraded sets, floor, and agreement with scipy."""

from __future__ import annotations

import pytest
import torch

from fewstep.evaluation import fid, frechet_distance
from fewstep.evaluation.fid import fid_streaming, frechet_distance_scipy


def test_fid_ranks_real_below_blur_below_noise_below_collapsed(features) -> None:
    ref = features["heldout"]
    vals = {k: frechet_distance(ref, features[k])
            for k in ("train", "blurred", "noise", "collapsed")}
    assert vals["train"] < vals["blurred"] < vals["noise"] < vals["collapsed"]
    assert vals["blurred"] > 20 * vals["train"]


def test_fid_train_vs_heldout_is_at_its_floor(features) -> None:
    """Floor: disjoint 1077 / 360 splits of the train features (same distribution, similar
    sizes to train-vs-heldout 1437 / 360). Measured: floor 11.6 +- 3.2, train-vs-heldout 5.4."""
    tr = features["train"]
    floor = []
    for s in range(8):
        p = torch.randperm(len(tr), generator=torch.Generator().manual_seed(s))
        floor.append(frechet_distance(tr[p[:-360]], tr[p[-360:]]))
    floor_t = torch.tensor(floor)
    value = frechet_distance(features["heldout"], tr)
    assert value <= floor_t.mean() + 2 * floor_t.std()


def test_fid_of_identical_sets_is_zero(features) -> None:
    assert frechet_distance(features["heldout"], features["heldout"]) == pytest.approx(0, abs=1e-6)


def test_torchmetrics_matches_scipy_sqrtm() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 6, generator=g, dtype=torch.float64)
    b = torch.randn(250, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g,
                                                                dtype=torch.float64) + 0.5
    assert frechet_distance(a, b) == pytest.approx(frechet_distance_scipy(a, b), rel=1e-8)


def test_image_level_fid_and_streaming_agree(classifier, digits, bad_sets) -> None:
    xte, blurred = digits["xte"], bad_sets["blurred"]
    direct = fid(blurred, xte, classifier)
    metric = fid_streaming(classifier)
    for i in range(0, len(xte), 100):
        metric.update(xte[i:i + 100], real=True)
        metric.update(blurred[i:i + 100], real=False)
    assert float(metric.compute()) == pytest.approx(direct, rel=1e-4)
