"""Build the shared recipe parts from a :class:`DistillConfig` (one place, used by all recipes)."""

from __future__ import annotations

from fewstep.distill.config import DistillConfig, DMSpec, GanSpec
from fewstep.distill.context import DistillContext
from fewstep.distill.parts.adversary import Adversary
from fewstep.distill.parts.discriminator import (
    Discriminator,
    StandaloneDiscriminator,
    TeacherFeatureDiscriminator,
)
from fewstep.distill.parts.fake_score import FakeScore, feature_dims
from fewstep.distill.parts.matching import DistributionMatching


def gan_section(cfg: DistillConfig) -> GanSpec:
    """The ``gan:`` section of a method's config (``TypeError`` if the method has none)."""
    g = getattr(cfg, "gan", None)
    if not isinstance(g, GanSpec):
        raise TypeError(f"method {cfg.method!r} has no gan: section")
    return g


def dm_section(cfg: DistillConfig) -> DMSpec:
    """The ``dm:`` section of a method's config (``TypeError`` if the method has none)."""
    dm = getattr(cfg, "dm", None)
    if not isinstance(dm, DMSpec):
        raise TypeError(f"method {cfg.method!r} has no dm: section")
    return dm


def build_discriminator(ctx: DistillContext) -> Discriminator:
    """The configured discriminator (``gan.discriminator``) on ``ctx.device``: heads on the
    frozen teacher's features (``teacher_features``) or a standalone network."""
    g = gan_section(ctx.cfg)
    nc = ctx.problem.num_classes
    if g.discriminator == "teacher_features":
        dims = feature_dims(ctx.teacher, ctx.example, ctx.example_cond)
        disc: Discriminator = TeacherFeatureDiscriminator(ctx.teacher, dims, g.layers,
                                                          g.head_hidden, nc)
    else:
        disc = StandaloneDiscriminator(ctx.problem.data_shape, num_classes=nc)
    return disc.to(ctx.device)


def build_adversary(ctx: DistillContext) -> Adversary:
    """The Turbo++ / DMD2 adversary with the configured discriminator."""
    g = gan_section(ctx.cfg)
    return Adversary(build_discriminator(ctx), g.loss, g.sigma_min, g.sigma_max)


def build_fake_score(ctx: DistillContext, gan_head: bool = False) -> FakeScore:
    return FakeScore(ctx.teacher, gan_head, ctx.problem.num_classes, ctx.example,
                     ctx.example_cond).to(ctx.device)


def build_matching(ctx: DistillContext, cfg: DistillConfig | None = None,
                   fake: FakeScore | None = None) -> DistributionMatching:
    dm = dm_section(cfg or ctx.cfg)
    w = dm.cfg_scale if dm.cfg_scale is not None else ctx.teacher_cfg_scale
    return DistributionMatching(ctx.teacher, fake or build_fake_score(ctx), w, dm.sigma_min,
                                dm.sigma_max)
