"""Feature networks the user names by a local path (nothing is downloaded).

* ``clip:FOLDER``: a transformers CLIP folder (``CLIPModel`` + ``CLIPProcessor``, e.g. a saved
  ``openai/clip-vit-large-patch14``). Image features: ``get_image_features`` of the images
  resized (bicubic, antialiased) to the processor's crop size and normalised with its mean /
  std, computed in torch (no PIL round trip); text features: ``get_text_features`` of the
  tokenized prompts. The one network that also gives a CLIP score.
* ``torchscript:FILE``: a TorchScript module taking ``(N, 3, H, W)`` float images in
  ``[0, 255]`` and returning ``(N, d)`` features -- the calling convention of the Inception
  network FID is computed with in StyleGAN / clean-fid (``inception-2015-12-05.pt``, called
  with ``return_features=True`` when its ``forward`` takes that argument). It resizes itself.

Every network is named by what identifies it: the spec, the architecture where known, and a
sha256 prefix of its weight files (``metrics.json`` records the name next to each figure).
One-channel images are repeated to three channels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fewstep.errors import ConfigError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_sha256(path: Path, length: int = 12) -> str:
    """sha256 (first ``length`` hex digits) over a file, or a folder's weight files."""
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:length]


def _rgb(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ConfigError(f"--features: images have {x.shape[1]} channels; CLIP / Inception "
                          "features need 1 or 3")
    return x


class ClipFeatures(nn.Module):
    """A local CLIP model as an image (``forward``) and text (:meth:`text`) feature map."""

    mean: Tensor  # (1, 3, 1, 1) buffers: the image processor's normalisation
    std: Tensor

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        from transformers import CLIPModel, CLIPProcessor

        path = Path(folder).expanduser()
        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
            self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"clip:{folder}: not a CLIP model folder ({e})") from None
        ip = self.processor.image_processor
        crop = ip.crop_size
        self.size = (int(crop["height"]), int(crop["width"]))
        self.register_buffer("mean", torch.tensor(ip.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(ip.image_std).view(1, 3, 1, 1))
        cfg = self.model.config
        self.name = (f"clip:{path} (CLIPModel, vision {cfg.vision_config.hidden_size} x "
                     f"{cfg.vision_config.num_hidden_layers} layers, projection "
                     f"{cfg.projection_dim}, sha256 {weights_sha256(path)})")

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Images ``(N, C, H, W)`` in ``[-1, 1]`` -> ``(N, projection_dim)``."""
        x = (_rgb(x).to(self.mean.device).float().clamp(-1, 1) + 1) / 2
        x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False)
        out = self.model.get_image_features(pixel_values=(x - self.mean) / self.std)
        return getattr(out, "pooler_output", out).float()

    @torch.no_grad()
    def text(self, prompts: list[str]) -> Tensor:
        """Prompts -> ``(P, projection_dim)`` (truncated to the model's context length)."""
        tok = self.processor(text=list(prompts), return_tensors="pt", padding=True,
                             truncation=True)
        dev = self.mean.device
        out = self.model.get_text_features(input_ids=tok["input_ids"].to(dev),
                                           attention_mask=tok["attention_mask"].to(dev))
        return getattr(out, "pooler_output", out).float()


class TorchScriptFeatures(nn.Module):
    """A TorchScript feature network (module docstring)."""

    def __init__(self, file: str | Path) -> None:
        super().__init__()
        path = Path(file).expanduser()
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"torchscript:{file}: not a TorchScript file "
                              f"({str(e).splitlines()[0]})") from None
        schema = str(getattr(self.net.forward, "schema", ""))
        self.kwargs = {"return_features": True} if "return_features" in schema else {}
        self.name = f"torchscript:{path} (sha256 {weights_sha256(path)})"

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        dev = next(iter(self.net.parameters()), torch.empty(0)).device
        out = self.net((_rgb(x).float().clamp(-1, 1).to(dev) + 1) * 127.5, **self.kwargs)
        if out.ndim != 2:
            raise ConfigError(f"{self.name}: returned shape {tuple(out.shape)}, expected (N, d)")
        return out.float()


def load_feature_net(spec: str, device: torch.device | str = "cpu") -> nn.Module:
    """``clip:FOLDER`` or ``torchscript:FILE`` (module docstring) on ``device``; the module has
    a ``name`` and, for CLIP, ``text(prompts)``."""
    kind, _, where = spec.partition(":")
    if not where or not Path(where).expanduser().exists():
        raise ConfigError(f"--features {spec}: {where or '(no path)'} does not exist")
    if kind == "clip":
        return ClipFeatures(where).to(device)
    if kind == "torchscript":
        return TorchScriptFeatures(where).to(device)
    raise ConfigError(f"--features {spec}: use clip:FOLDER or torchscript:FILE")


__all__ = ["ClipFeatures", "TorchScriptFeatures", "load_feature_net", "weights_sha256"]
