"""Which feature space the image metrics (Fréchet distance, PRDC) are computed in.

A Fréchet distance only means something in a feature space valid for the data. Choices
(``--features`` of ``fewstep eval``, ``feature_space`` in ``metrics.json``):

* ``auto`` (default): ``digits_classifier`` for the built-in digits, ``points`` for the 2-D
  toys, ``pixels`` for your own images;
* ``pixels``: the flattened pixels in [-1, 1] (``(N, C * H * W)``);
* ``digits_classifier``: the shipped 8x8 digits classifier (only for ``(1, 8, 8)`` data);
* ``classifier:FILE``: a classifier trained on your labels by
  ``fewstep classifier train --data PATH`` (its input shape must match the data);
* ``builder:pkg.module:function`` (or just ``pkg.module:function``): a function you name that
  returns an ``nn.Module`` with ``features(x) -> (N, d)`` (or whose ``forward`` returns
  ``(N, d)``) for ``x (N, C, H, W)`` in [-1, 1]; it is imported from your Python path;
* ``clip:FOLDER`` / ``torchscript:FILE``: a CLIP model folder or a TorchScript network (e.g.
  the FID Inception) saved on disk (:mod:`fewstep.evaluation.feature_nets`); ``name`` then
  records the path, architecture and a sha256 prefix of the weights.

Class accuracy is reported only when the feature space comes with a classifier *for the data's
classes* (the digits classifier on digits, or ``classifier:FILE`` with the same class count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fewstep.errors import ConfigError
from fewstep.evaluation.digits_classifier import load_default_classifier
from fewstep.evaluation.fid import extract_features
from fewstep.evaluation.image_classifier import load_image_classifier
from fewstep.utils.imports import import_callable

DIGITS_FEATURES = "digits_classifier"


@dataclass
class FeatureSpace:
    """A named feature map and, when one exists for the data's classes, a classifier.

    Attributes:
        name: what ``metrics.json`` records as ``feature_space``.
        net: a module with ``features(x)`` (or ``forward``) -> ``(N, d)``; ``None``: pixels.
        classifier: logits ``(N, num_classes)`` for class accuracy, or ``None``.
    """

    name: str
    net: nn.Module | None = None
    classifier: nn.Module | None = None

    @torch.no_grad()
    def text(self, prompts: list[str]) -> Tensor:
        """``(P, d)`` text features in the same space (a CLIP network only)."""
        fn = getattr(self.net, "text", None)
        if fn is None:
            raise ConfigError(f"{self.name}: no text tower (a CLIP score needs clip:FOLDER)")
        return fn(list(prompts)).float()

    @torch.no_grad()
    def features(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """``(N, d)`` features of images ``x`` (float32 pixels when ``net`` is ``None``)."""
        if self.net is None:
            return x.flatten(1).float()
        if hasattr(self.net, "features"):
            return extract_features(self.net, x, batch_size).float()
        was = self.net.training
        self.net.eval()
        try:
            out = torch.cat([self.net(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        finally:
            self.net.train(was)
        if out.ndim != 2:
            raise ConfigError(f"--features {self.name}: the network returned shape "
                              f"{tuple(out.shape)}, expected (N, d)")
        return out.float()


def load_builder(target: str) -> nn.Module:
    """Import ``pkg.module:function`` and call it (no arguments) for a feature module."""
    try:
        fn = import_callable(target)
    except ValueError as e:
        raise ConfigError(f"--features builder:{target}: cannot import it ({e})") from None
    try:
        net = fn()
    except TypeError as e:  # a builder of another signature
        raise ConfigError(f"--features builder:{target}: calling it with no arguments failed "
                          f"({e}); it must take no arguments and return an nn.Module mapping "
                          "(N, C, H, W) images to (N, d) features") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"--features builder:{target}: returned {type(net).__name__}, "
                          f"expected a torch.nn.Module")
    return net


def resolve_feature_space(problem: Any, spec: str = "auto",
                          device: torch.device | str = "cpu") -> FeatureSpace:
    """The :class:`FeatureSpace` named by ``spec`` for ``problem`` (see module docstring)."""
    shape = tuple(problem.data_shape)
    spec = (spec or "auto").strip()
    if problem.is_toy:
        if spec not in ("auto", "points"):
            raise ConfigError(f"--features {spec}: 2-D toy data are scored as points "
                              f"(sliced Wasserstein, mode coverage)")
        return FeatureSpace("points")
    is_digits = problem.default_features == DIGITS_FEATURES
    if spec == "auto":
        spec = problem.default_features
    named = named_feature_space(spec, device)
    if named is not None:
        if named.name.startswith("builder:"):
            _probe_builder(named, shape, device)
        return named
    if spec in (DIGITS_FEATURES, "digits"):
        if shape != (1, 8, 8):
            raise ConfigError(f"--features {spec}: the digits classifier takes (1, 8, 8) images, "
                              f"the data are {shape}; use pixels or classifier:FILE")
        net = load_default_classifier(device)
        cls = net if (is_digits or problem.num_classes == 10) else None
        return FeatureSpace(DIGITS_FEATURES, net, cls)
    if spec.startswith("classifier:"):
        path = spec.split(":", 1)[1]
        image_net = load_image_classifier(path, device)
        if tuple(image_net.config.data_shape) != shape:
            raise ConfigError(f"--features {spec}: the classifier takes images of shape "
                              f"{tuple(image_net.config.data_shape)}, the data are {shape}")
        image_cls = image_net if image_net.config.num_classes == problem.num_classes else None
        return FeatureSpace(spec, image_net, image_cls)
    raise ConfigError(f"--features {spec}: use auto, pixels, digits_classifier, "
                      f"classifier:FILE, clip:FOLDER, torchscript:FILE or "
                      f"builder:pkg.module:function")


def named_feature_space(spec: str, device: torch.device | str = "cpu") -> FeatureSpace | None:
    """The data-independent feature spaces: ``pixels``, ``clip:FOLDER``, ``torchscript:FILE``,
    ``builder:pkg.mod:fn`` (or ``pkg.mod:fn``); ``None`` for another ``spec``."""
    if spec == "pixels":
        return FeatureSpace("pixels")
    if spec.startswith(("clip:", "torchscript:")):
        from fewstep.evaluation.feature_nets import load_feature_net

        net = load_feature_net(spec, device)
        return FeatureSpace(str(net.name), net, None)
    if spec in (DIGITS_FEATURES, "digits", "auto", "points") or spec.startswith("classifier:"):
        return None
    target = spec.split(":", 1)[1] if spec.startswith("builder:") else spec
    if ":" not in target:
        return None
    return FeatureSpace(f"builder:{target}", load_builder(target).to(device), None)


def _probe_builder(fs: FeatureSpace, shape: tuple[int, ...], device: torch.device | str) -> None:
    """One probe batch through a user's feature module: a module of the wrong signature fails
    here, in one line naming the option."""
    try:
        fs.features(torch.zeros((2, *shape), device=device))
    except (TypeError, RuntimeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"--features {fs.name}: the module failed on a batch of shape "
                          f"{(2, *shape)} ({' '.join(str(e).split())[:200]}); it must map "
                          "(N, C, H, W) images to (N, d) features") from None


__all__ = ["DIGITS_FEATURES", "FeatureSpace", "load_builder", "named_feature_space",
           "resolve_feature_space"]
