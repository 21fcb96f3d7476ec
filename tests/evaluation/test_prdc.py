"""PRDC against an independent brute-force implementation, and its behaviour on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.evaluation import prdc


def brute_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    def dist(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(((a - b) ** 2).sum()))

    def radii(x: np.ndarray) -> list[float]:
        return [sorted(dist(x[i], x[j]) for j in range(len(x)) if j != i)[k - 1]
                for i in range(len(x))]

    rr, rf = radii(real), radii(fake)
    n, m = len(real), len(fake)
    prec = np.mean([any(dist(f, real[i]) <= rr[i] for i in range(n)) for f in fake])
    rec = np.mean([any(dist(r, fake[j]) <= rf[j] for j in range(m)) for r in real])
    dens = sum(dist(f, real[i]) <= rr[i] for f in fake for i in range(n)) / (k * m)
    cov = np.mean([min(dist(real[i], f) for f in fake) <= rr[i] for i in range(n)])
    return {"precision": prec, "recall": rec, "density": dens, "coverage": cov}


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_matches_brute_force(k: int) -> None:
    rng = np.random.default_rng(k)
    real = rng.normal(size=(40, 3))
    fake = rng.normal(size=(33, 3)) * 1.3 + 0.4
    got = prdc(torch.from_numpy(real), torch.from_numpy(fake).float(), k=k, chunk=7)
    want = brute_prdc(real, fake.astype(np.float32).astype(np.float64), k)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key


def test_prdc_identical_sets() -> None:
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    out = prdc(x, x, k=5)
    assert out["precision"] == out["recall"] == out["coverage"] == 1.0
    assert out["density"] == pytest.approx(6 / 5)  # each point lies in its own ball + 5 others'


def test_prdc_on_digits_behaves(features) -> None:
    ref = features["heldout"]
    real = prdc(ref, features["train"])
    blur, noise, coll = (prdc(ref, features[k]) for k in ("blurred", "noise", "collapsed"))
    assert real["precision"] > 0.9 and real["recall"] > 0.9 and real["coverage"] > 0.95
    for bad in (blur, noise):
        assert bad["precision"] < real["precision"] - 0.4
        assert bad["recall"] < real["recall"] - 0.4
        assert bad["coverage"] < 0.3
    # one repeated real image: every sample is realistic, nothing else is covered
    assert coll["precision"] == 1.0
    assert coll["recall"] < 0.02 and coll["coverage"] < 0.05
