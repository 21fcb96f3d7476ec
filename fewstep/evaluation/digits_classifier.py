"""A small conv net on 8x8 digits, used as the fixed feature network for FID / PRDC and as the
class-accuracy judge.

Conventions: inputs are ``(B, 1, 8, 8)`` in model space [-1, 1] (background = -1), exactly what
:func:`fewstep.data.load_digits_split` returns and what generators produce. ``features(x)``
returns the penultimate activations ``(B, num_features)``; ``forward(x)`` returns logits
``(B, 10)``. Inputs are cast to the network's own device and dtype.

Training uses the train split only, with random 1-pixel shifts (background-padded) as
augmentation, and is deterministic given the seed (own RNG streams; the global RNG is untouched).
The shipped weights live in ``fewstep/assets/digits_classifier.safetensors`` with the config and
training record in the safetensors metadata (no pickle).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import Tensor, nn

from fewstep.assets import ASSETS
from fewstep.data.digits import load_digits_split
from fewstep.utils.files import atomic_write_bytes

ASSET_NAME = "digits_classifier.safetensors"
FORMAT_TAG = "fewstep.digits_classifier.v1"
DEFAULT_ASSET = ASSETS / ASSET_NAME


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`DigitsClassifier` (stored as JSON in the asset metadata)."""

    channels: tuple[int, int, int] = (16, 32, 32)
    num_features: int = 64
    num_classes: int = 10


class DigitsClassifier(nn.Module):
    """conv3-conv3-pool-conv3 -> linear(``num_features``) -> linear(``num_classes``).

    ``features(x)``: ``(B, 1, 8, 8)`` -> ``(B, num_features)`` (post-ReLU penultimate layer).
    ``forward(x)``: ``(B, 1, 8, 8)`` -> logits ``(B, num_classes)``.
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        c1, c2, c3 = self.config.channels
        self.num_features = self.config.num_features
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                   # 8x8 -> 4x4
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c3 * 16, self.num_features), nn.ReLU(),
        )
        self.head = nn.Linear(self.num_features, self.config.num_classes)

    def _cast(self, x: Tensor) -> Tensor:
        p = self.head.weight
        return x.to(device=p.device, dtype=p.dtype)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, num_features)`` of ``x (B, 1, 8, 8)`` in [-1, 1]."""
        return self.body(self._cast(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``."""
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Predicted class ``(B,)`` long, on the network's device (eval mode, batched)."""
        was_training = self.training
        self.eval()
        out = torch.cat([self(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
        self.train(was_training)
        return out


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image of ``x (B, C, H, W)`` by an independent integer offset in
    ``[-max_shift, max_shift]`` per axis, filling with the background value -1."""
    b, _, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m), value=-1.0)
    dy = torch.randint(0, 2 * m + 1, (b,), generator=generator, device=generator.device)
    dx = torch.randint(0, 2 * m + 1, (b,), generator=generator, device=generator.device)
    rows = (dy.to(x.device)[:, None] + torch.arange(h, device=x.device)[None])  # (B, H)
    cols = (dx.to(x.device)[:, None] + torch.arange(w, device=x.device)[None])  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]   # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``x (N, 1, 8, 8)`` with labels ``y (N,)``."""
    return (model.predict(x).cpu() == y.cpu()).float().mean().item()


def train_classifier(
    seed: int = 0,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    max_shift: int = 1,
    config: ClassifierConfig | None = None,
    device: str | torch.device = "cpu",
) -> tuple[DigitsClassifier, float]:
    """Train on the train split (1-pixel shifts, AdamW, cosine LR); return ``(model, acc)`` with
    ``acc`` the held-out accuracy. Deterministic for a given seed, device and intra-op thread
    count (see :func:`train_and_save_classifier`)."""
    device = torch.device(device)
    xtr, ytr = load_digits_split("train")
    xte, yte = load_digits_split("heldout")
    xtr, ytr = xtr.to(device), ytr.to(device)
    data_gen = torch.Generator(device=device).manual_seed(seed + 1)
    with torch.random.fork_rng(devices=[]):  # init from the seed, global RNG left untouched
        torch.manual_seed(seed)
        model = DigitsClassifier(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.1)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (batch_size,), generator=data_gen, device=device)
        xb = xtr[idx]
        if max_shift > 0:
            xb = random_shift(xb, max_shift, data_gen)
        loss = F.cross_entropy(model(xb), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model, accuracy(model, xte.to(device), yte.to(device))


def save_classifier(model: DigitsClassifier, path: str | Path,
                    extra: dict[str, object] | None = None) -> None:
    """Write weights + JSON config to ``path`` (safetensors), atomically (temp file, fsync,
    ``os.replace``). ``extra`` is JSON-encoded into the metadata under ``"record"``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    cfg = asdict(model.config)
    metadata = {"format": FORMAT_TAG, "config": json.dumps(cfg),
                "record": json.dumps(extra or {}, sort_keys=True)}
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def read_classifier_metadata(path: str | Path) -> dict[str, Any]:
    """Return ``{"format", "config", "record"}`` (JSON decoded) from an asset's metadata."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT_TAG:
        raise ValueError(f"{path}: not a fewstep digits classifier (format={meta.get('format')!r})")
    return {"format": meta["format"], "config": json.loads(meta["config"]),
            "record": json.loads(meta.get("record", "{}"))}


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> DigitsClassifier:
    """Load a classifier written by :func:`save_classifier`, in eval mode, without gradients."""
    meta = read_classifier_metadata(path)
    cfg = dict(meta["config"])
    cfg["channels"] = tuple(cfg["channels"])
    model = DigitsClassifier(ClassifierConfig(**cfg))
    model.load_state_dict(load_file(str(path), device="cpu"))
    model.requires_grad_(False)
    return model.to(device).eval()


def load_default_classifier(device: str | torch.device = "cpu") -> DigitsClassifier:
    """Load the shipped ``fewstep/assets/digits_classifier.safetensors``."""
    if not DEFAULT_ASSET.is_file():
        raise FileNotFoundError(f"{DEFAULT_ASSET} is missing; run "
                                "fewstep.evaluation.digits_classifier.train_and_save_classifier(...)")
    return load_classifier(DEFAULT_ASSET, device=device)


def train_and_save_classifier(out_path: str | Path = DEFAULT_ASSET, seed: int = 0,
                              steps: int = 1000, num_threads: int | None = 1,
                              **kwargs: Any) -> dict[str, object]:
    """Train (see :func:`train_classifier`), save to ``out_path`` and return the record
    ``{"path", "seed", "steps", "num_threads", "heldout_accuracy", "wall_time_s", ...}``.

    CPU float results depend on the intra-op thread count, so training runs with
    ``num_threads`` threads (restored afterwards; ``None`` keeps the current setting). The
    shipped asset is ``seed=0, steps=1000, num_threads=1``, bit-reproducible on CPU."""
    prev_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        t0 = time.perf_counter()
        model, acc = train_classifier(seed=seed, steps=steps, **kwargs)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(prev_threads)
    record: dict[str, object] = {
        "seed": seed, "steps": steps, "num_threads": num_threads,
        "heldout_accuracy": round(acc, 6),
        "wall_time_s": round(wall, 2), "num_params": sum(p.numel() for p in model.parameters()),
        "train_kwargs": {k: v for k, v in kwargs.items() if isinstance(v, int | float | str)},
        "torch": torch.__version__,
    }
    save_classifier(model, out_path, extra=record)
    return {"path": str(out_path), **record}
