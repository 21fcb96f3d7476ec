"""Build the shared recipe parts from a :class:`DistillConfig` (one place, used by all recipes)."""

from __future__ import annotations

from torch import nn

from fewstep.distill.config import DistillConfig
from fewstep.distill.context import DistillContext
from fewstep.distill.parts.adversary import Adversary
from fewstep.distill.parts.discriminator import StandaloneDiscriminator, TeacherFeatureDiscriminator
from fewstep.distill.parts.fake_score import FakeScore, feature_dims
from fewstep.distill.parts.matching import DistributionMatching


def build_discriminator(ctx: DistillContext) -> nn.Module:
    """The configured discriminator (``gan.discriminator``) on ``ctx.device``: heads on the
    frozen teacher's features (``teacher_features``) or a standalone network."""
    g = ctx.cfg.gan  # type: ignore[attr-defined]
    nc = ctx.problem.num_classes
    if g.discriminator == "teacher_features":
        dims = feature_dims(ctx.teacher, ctx.example, ctx.example_cond)
        disc: nn.Module = TeacherFeatureDiscriminator(ctx.teacher, dims, g.layers,
                                                      g.head_hidden, nc)
    else:
        disc = StandaloneDiscriminator(ctx.problem.data_shape, num_classes=nc)
    return disc.to(ctx.device)


def build_adversary(ctx: DistillContext) -> Adversary:
    """The Turbo++ / DMD2 adversary with the configured discriminator."""
    g = ctx.cfg.gan  # type: ignore[attr-defined]
    return Adversary(build_discriminator(ctx), g.loss, g.sigma_min, g.sigma_max)


def build_fake_score(ctx: DistillContext, gan_head: bool = False) -> FakeScore:
    return FakeScore(ctx.teacher, gan_head, ctx.problem.num_classes, ctx.example,
                     ctx.example_cond).to(ctx.device)


def build_matching(ctx: DistillContext, cfg: DistillConfig | None = None,
                   fake: FakeScore | None = None) -> DistributionMatching:
    cfg = cfg or ctx.cfg
    w = cfg.dm.cfg_scale if cfg.dm.cfg_scale is not None else ctx.teacher_cfg_scale
    return DistributionMatching(ctx.teacher, fake or build_fake_score(ctx), w, cfg.dm.sigma_min,
                                cfg.dm.sigma_max)
