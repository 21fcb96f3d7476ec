"""A small conv classifier for *your own* labelled images: the feature network for Fréchet
distance / PRDC and the class-accuracy judge of ``fewstep eval --features classifier:FILE``.

``fewstep classifier train --data PATH --out FILE`` trains it on the data set's train split
(labels from class sub-folders or a label array) and reports held-out accuracy.

Conventions: inputs ``(B, C, H, W)`` in model space [-1, 1], exactly what the data loaders and
generators produce; ``features(x)`` -> ``(B, num_features)`` (post-ReLU penultimate layer,
global-average pooled, so any image size works); ``forward(x)`` -> logits ``(B, num_classes)``.
The file is safetensors with format tag :data:`FORMAT_TAG` and a JSON config recording the
input shape, the class count and names and the data it was trained on (no pickle).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import Tensor, nn

from fewstep.data.problem import get_problem
from fewstep.errors import CheckpointError, ConfigError
from fewstep.evaluation.digits_classifier import random_shift
from fewstep.utils.files import atomic_write_bytes

FORMAT_TAG = "fewstep.image_classifier.v1"


@dataclass(frozen=True)
class ImageClassifierConfig:
    """Architecture and what the classifier was trained for."""

    data_shape: tuple[int, int, int]
    num_classes: int
    channels: tuple[int, int, int] = (32, 64, 128)
    num_features: int = 128
    class_names: tuple[str, ...] = ()
    data: Any = field(default=None, compare=False)


class ImageClassifier(nn.Module):
    """conv-conv-pool-conv-conv-pool-conv -> global average -> linear(num_features) ->
    linear(num_classes)."""

    def __init__(self, config: ImageClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c0 = config.data_shape[0]
        c1, c2, c3 = config.channels
        self.num_features = config.num_features
        self.body = nn.Sequential(
            nn.Conv2d(c0, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(c3, config.num_features), nn.ReLU(),
        )
        self.head = nn.Linear(config.num_features, config.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """``(B, num_features)`` features of ``x (B, C, H, W)`` in [-1, 1]."""
        p = self.head.weight
        return self.body(x.to(device=p.device, dtype=p.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def _accuracy(model: ImageClassifier, x: Tensor, y: Tensor, batch: int = 512) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + batch]).argmax(1).cpu() for i in range(0, len(x), batch)])
    return float((pred == y.cpu()).float().mean())


def train_image_classifier(data: Any, steps: int = 1500, batch_size: int = 128, lr: float = 2e-3,
                           seed: int = 0, device: str | torch.device = "cpu"
                           ) -> tuple[ImageClassifier, dict[str, Any]]:
    """Train on ``data``'s train split (random 1-pixel shifts, no flips: they can change the
    class; AdamW, one-cycle LR);
    returns ``(model in eval mode, record)`` with the held-out accuracy."""
    prob = get_problem(data)
    if prob.is_toy:
        raise ConfigError(f"data: {prob.name!r} has no images to classify")
    if prob.num_classes < 2:
        raise ConfigError(f"data: {prob.label} has no labels (class sub-folders or a label "
                          f"array); a classifier needs at least 2 classes")
    xtr, ytr = prob.split("train")
    xte, yte = prob.split("heldout")
    assert ytr is not None and yte is not None
    names = tuple(prob.image_data().class_names) if prob.is_user_data else \
        tuple(str(i) for i in range(prob.num_classes))
    cfg = ImageClassifierConfig(tuple(prob.data_shape), prob.num_classes,  # type: ignore[arg-type]
                                class_names=names, data=prob.name)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageClassifier(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    xtr, ytr = xtr.to(device), ytr.to(device)
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (batch_size,), generator=gen).to(device)
        xb = random_shift(xtr[idx], 1, gen)
        loss = F.cross_entropy(model(xb), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval().requires_grad_(False)
    record = {"heldout_accuracy": round(_accuracy(model, xte.to(device), yte), 4),
              "steps": steps, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
              "train_images": len(xtr), "heldout_images": len(xte)}
    return model, record


def save_image_classifier(model: ImageClassifier, path: str | Path,
                          record: dict[str, Any] | None = None) -> None:
    """Weights + JSON config + training record, written atomically (safetensors)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT_TAG, "config": json.dumps(asdict(model.config)),
            "record": json.dumps(record or {}, sort_keys=True)}
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def load_image_classifier(path: str | Path, device: str | torch.device = "cpu"
                          ) -> ImageClassifier:
    """Load a file written by :func:`save_image_classifier` (eval mode, no gradients)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"classifier file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for foreign files
        raise CheckpointError(f"{p} is not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{p} is not a fewstep image classifier (format "
                              f"{meta.get('format')!r}); train one with fewstep classifier "
                              f"train --data PATH")
    c = json.loads(meta["config"])
    cfg = ImageClassifierConfig(tuple(c["data_shape"]), int(c["num_classes"]),
                                tuple(c["channels"]), int(c["num_features"]),
                                tuple(c.get("class_names", ())), c.get("data"))
    model = ImageClassifier(cfg)
    model.load_state_dict(load_file(str(p), device="cpu"))
    return model.to(device).eval().requires_grad_(False)


__all__ = ["FORMAT_TAG", "ImageClassifier", "ImageClassifierConfig", "load_image_classifier",
           "save_image_classifier", "train_image_classifier"]
