"""A pipeline teacher on the ``meta`` device from its configs only (``fewstep plan``).

The denoiser is built from ``<component>/config.json`` (no weights, no recording: plan never
calls it), wrapped so the student factory and plan see its LoRA targets and discriminator
feature widths; the latent shape is read from the VAE's config: channels
(``latent_channels`` / ``z_dim``) and downsampling (``block_out_channels`` /
``encoder_block_out_channels`` / ``temperal_downsample``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffusers
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from fewstep.core.denoiser import Denoiser
from fewstep.teachers.diffusers.pipeline_denoiser import (
    block_width,
    default_lora_targets,
    find_feature_blocks,
)
from fewstep.teachers.diffusers.recorder import DENOISER_NAMES

_DECODERS = ("vae", "movq")


class MetaPipelineDenoiser(Denoiser):
    """A pipeline's network on ``meta`` (parameter counts, LoRA targets, feature widths)."""

    def __init__(self, net: nn.Module, component: str, feature_blocks: str | None = None,
                 lora_targets: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.component = component
        self.add_module(component, net)
        self._feature_blocks, self._lora_targets = feature_blocks, lora_targets

    @property
    def network(self) -> nn.Module:
        return getattr(self, self.component)

    @property
    def lora_targets(self) -> tuple[str, ...] | None:
        return self._lora_targets or default_lora_targets(self.network)

    def feature_widths(self) -> list[int]:
        return [block_width(b) for b in find_feature_blocks(self.network,
                                                             self._feature_blocks)]

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        raise RuntimeError("a meta teacher has no weights (fewstep plan counts, it never runs)")


def vae_latent_shape(config: dict[str, Any], resolution: int) -> tuple[int, int, int]:
    """``(C, H / f, W / f)`` of square images from a VAE config (see module docstring)."""
    c = config.get("latent_channels") or config.get("z_dim")
    if config.get("temperal_downsample") is not None:
        f = 2 ** len(config["temperal_downsample"])
    else:
        blocks = config.get("block_out_channels") or config.get("encoder_block_out_channels")
        if not blocks or c is None:
            raise ValueError(f"cannot read the latent shape of a {config.get('_class_name')} "
                             "from its config")
        f = 2 ** (len(blocks) - 1)
    if c is None:
        raise ValueError(f"cannot read the latent channels of a {config.get('_class_name')} "
                         "from its config")
    if resolution % f:
        raise ValueError(f"teacher.resolution {resolution} is not divisible by the VAE's "
                         f"factor {f}")
    return int(c), resolution // f, resolution // f


def meta_denoiser(pretrained: str, resolution: int,
                  family_for: Callable[[str, str | None], Any]
                  ) -> tuple[MetaPipelineDenoiser, tuple[int, int, int], str]:
    """``(denoiser on meta, latent shape, denoiser class)`` from ``pretrained``'s configs
    (``family_for``: :func:`fewstep.teachers.diffusers.families.family_for`)."""
    index = diffusers.DiffusionPipeline.load_config(pretrained)
    comps = {k: v[1] for k, v in index.items()
             if isinstance(v, list | tuple) and len(v) == 2 and v[0] is not None}
    pipe_cls = str(index.get("_class_name"))
    fam, _ = family_for(pipe_cls, None)
    name = fam.denoiser or next((n for n in DENOISER_NAMES if n in comps), None)
    if name is None or name not in comps:
        raise ValueError(f"{pipe_cls} lists no denoiser component "
                         f"({' / '.join(DENOISER_NAMES)})")
    model_cls = getattr(diffusers, comps[name], None)
    if not (isinstance(model_cls, type) and issubclass(model_cls, ModelMixin)
            and issubclass(model_cls, ConfigMixin)):
        raise ValueError(f"unknown denoiser class {comps[name]!r}")
    fam, _ = family_for(pipe_cls, comps[name])
    decoder = next((d for d in _DECODERS if d in comps), None)
    if decoder is None:
        raise ValueError(f"{pipe_cls} lists no VAE ({' / '.join(_DECODERS)})")
    vae_cfg = dict(diffusers.AutoencoderKL.load_config(pretrained, subfolder=decoder))
    shape = vae_latent_shape(vae_cfg, resolution)
    with torch.device("meta"):
        net = model_cls.from_config(model_cls.load_config(pretrained, subfolder=name))
    return MetaPipelineDenoiser(net, name, fam.feature_blocks, fam.lora_targets), shape, \
        comps[name]


__all__ = ["MetaPipelineDenoiser", "meta_denoiser", "vae_latent_shape"]
