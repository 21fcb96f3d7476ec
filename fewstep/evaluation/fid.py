"""Fréchet distance on the digit classifier's penultimate features ("FID" in this project).

Inception FID cannot run here (no torchvision, no weights), so the feature network is
:class:`fewstep.evaluation.digits_classifier.DigitsClassifier`. The Gaussian statistics and the
distance are torchmetrics' ``FrechetInceptionDistance`` (float64 sums, eigenvalue form of
``Tr sqrt(S1 S2)``), given a custom feature module. Images are passed in model space [-1, 1];
with a custom module and ``normalize=False`` torchmetrics hands the tensor to the module
unchanged (no uint8 conversion, no resizing).

Features are extracted once by :func:`extract_features` so that FID and PRDC share them; the
torchmetrics metric is then fed the features through an identity module (``num_features`` set,
so torchmetrics does not probe with a 299x299 image). :func:`fid` does both steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance


class _FeatureModule(nn.Module):
    """Wraps ``net.features`` as ``forward`` for torchmetrics, with ``num_features`` exposed."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_features = int(net.num_features)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        return self.net.features(x)  # type: ignore[operator]


class _Passthrough(nn.Module):
    """Identity "feature extractor" for already-extracted features ``(N, d)``."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


@torch.no_grad()
def extract_features(net: nn.Module, images: Tensor, batch_size: int = 1024) -> Tensor:
    """``images (N, 1, 8, 8)`` in [-1, 1] -> features ``(N, d)`` from ``net.features`` (eval
    mode, batched; the training flag of ``net`` is restored). Output on ``net``'s device."""
    was_training = net.training
    net.eval()
    try:
        feats = [net.features(images[i:i + batch_size])  # type: ignore[operator]
                 for i in range(0, len(images), batch_size)]
    finally:
        net.train(was_training)
    return torch.cat(feats)


def frechet_distance(real_features: Tensor, fake_features: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to ``real (N, d)`` and ``fake (M, d)`` features
    (unbiased covariances, float64), via torchmetrics. Needs ``N, M >= 2``."""
    if real_features.ndim != 2 or fake_features.shape[1:] != real_features.shape[1:]:
        raise ValueError(f"expected (N, d) and (M, d) features, got {tuple(real_features.shape)} "
                         f"and {tuple(fake_features.shape)}")
    metric = FrechetInceptionDistance(feature=_Passthrough(real_features.shape[1]),
                                      normalize=False).to(real_features.device)
    metric.update(real_features.double(), real=True)
    metric.update(fake_features.to(real_features.device).double(), real=False)
    return float(metric.compute())


def frechet_distance_scipy(real_features: Tensor, fake_features: Tensor) -> float:
    """Reference implementation with ``scipy.linalg.sqrtm`` (float64), for cross-checks."""
    import numpy as np
    from scipy import linalg

    a = real_features.detach().double().cpu().numpy()
    b = fake_features.detach().double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                 - 2.0 * np.trace(covmean))


def fid(samples: Tensor, reference: Tensor, net: nn.Module, batch_size: int = 1024) -> float:
    """FID between image sets ``samples (M, 1, 8, 8)`` and ``reference (N, 1, 8, 8)`` (both in
    [-1, 1]) on ``net.features``."""
    return frechet_distance(extract_features(net, reference, batch_size),
                            extract_features(net, samples, batch_size))


def fid_streaming(net: nn.Module) -> FrechetInceptionDistance:
    """A torchmetrics FID metric that calls ``net.features`` on images in [-1, 1]; use
    ``update(images, real=...)`` batch by batch and ``compute()``. Note that moving the metric
    with ``.to(device)`` also moves ``net``."""
    return FrechetInceptionDistance(feature=_FeatureModule(net), normalize=False)
