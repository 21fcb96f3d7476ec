"""What every distillation method implements, and what the trainer hands it.

A method is one file under :mod:`fewstep.distill.methods` holding

* its config (a subclass of :class:`~fewstep.distill.config.DistillConfig` with
  ``method: Literal["name"]`` and the sections it reads),
* a :class:`DistillMethod` subclass decorated with
  :func:`~fewstep.distill.methods.registry.register`, which declares

  - :meth:`~DistillMethod.data_needs`: what each batch must carry (:class:`DataNeeds`),
  - :meth:`~DistillMethod.aux_updates`: its optimizers (:class:`AuxUpdates`: aux parameter
    groups with their own learning rates, aux updates per generator update, aux clip;
    :meth:`~DistillMethod.aux_updates_for` builds it from the ``train`` section),
  - :meth:`~DistillMethod.graph_forwards`: network passes whose graph one generator loss keeps
    (per sample; ``fewstep plan`` sizes activations with it),
  - the losses :meth:`~DistillMethod.generator_loss` and :meth:`~DistillMethod.aux_loss`.

A method is an ``nn.Module`` holding its *auxiliary* trainable parts (discriminator, fake score
network); the student and the frozen teacher live in :class:`DistillContext`. Per iteration the
trainer runs ``aux_updates().aux_per_generator`` aux updates (each on a fresh batch), then one
student update. The budget ``train.iterations`` counts generator updates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

import torch
from torch import Tensor, nn

from fewstep.core.conditioning import cat_cond, where_cond
from fewstep.distill.config import DistillConfig, RealSource
from fewstep.distill.context import AuxUpdates, Batch, DataNeeds, DistillContext, Logs
from fewstep.distill.parts.builders import dm_section, gan_section
from fewstep.distill.parts.fake_score import FakeScore, fake_score_groups

#: a method's own config class (``method: Literal["name"]`` and the sections it reads)
ConfigT = TypeVar("ConfigT", bound=DistillConfig)

__all__ = [
    "AuxUpdates",
    "Batch",
    "DataNeeds",
    "DistillContext",
    "DistillMethod",
    "FakeScoreMethod",
    "Logs",
    "cat_cond",
    "where_cond",
]


class DistillMethod(nn.Module, ABC, Generic[ConfigT]):
    """Base class of a method (see the module docstring), generic in its config class:
    ``class TurboPP(DistillMethod[TurboPPConfig])`` reads ``self.cfg.step1`` typed."""

    #: set by :func:`~fewstep.distill.methods.registry.register`
    name: ClassVar[str] = ""
    config_class: ClassVar[type[DistillConfig]] = DistillConfig

    def __init__(self, ctx: DistillContext) -> None:
        super().__init__()
        if not isinstance(ctx.cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got a "
                            f"{type(ctx.cfg).__name__}")
        self._ctx = [ctx]  # not a submodule: the student and teacher are owned by the trainer

    @property
    def ctx(self) -> DistillContext:
        return self._ctx[0]

    @property
    def cfg(self) -> ConfigT:
        """The run config as this method's own config class (checked in ``__init__``)."""
        return cast(ConfigT, self.ctx.cfg)  # the isinstance check above; a TypeVar can't narrow

    @classmethod
    def config_of(cls, cfg: DistillConfig) -> ConfigT:
        """``cfg`` as this method's config class (``TypeError`` for another method's)."""
        if not isinstance(cfg, cls.config_class):
            raise TypeError(f"{cls.__name__} needs a {cls.config_class.__name__}, got a "
                            f"{type(cfg).__name__}")
        return cast(ConfigT, cfg)

    # ------------------------------------------------------------ declarations
    def data_needs(self) -> DataNeeds:
        """What the batches must carry (default: noise and condition only)."""
        return DataNeeds()

    def aux_updates(self) -> AuxUpdates:
        """The aux optimizer layout (default: none)."""
        return AuxUpdates()

    @classmethod
    @abstractmethod
    def graph_forwards(cls, cfg: DistillConfig) -> int:
        """Network passes (student steps, teacher / fake / discriminator passes with gradient
        to the student) whose graph one generator loss keeps, per sample."""

    # ------------------------------------------------------------ declaration helpers
    def gan_real(self, on: bool) -> RealSource | None:
        """``DataNeeds.real`` of a method with an optional GAN: where the GAN block sends for
        real samples (``gan.real_from()``) when ``on``, else ``None`` (no real samples)."""
        return gan_section(self.ctx.cfg).real_from() if on else None

    def aux_updates_for(self, groups: list[dict[str, Any]]) -> AuxUpdates:
        """The aux optimizer over ``groups`` at the ``train`` section's layout: updated
        ``train.aux_ratio`` times per generator update, its gradient norm clipped at
        ``train.aux_grad_clip``."""
        t = self.ctx.cfg.train
        return AuxUpdates(groups, t.aux_ratio, t.aux_grad_clip)

    def aux_parameter_groups(self) -> list[dict[str, Any]]:
        """``aux_updates().aux_groups`` (the aux optimizer's parameter groups)."""
        return self.aux_updates().aux_groups

    @property
    def needs_teacher_pairs(self) -> bool:
        return self.data_needs().teacher_pairs

    @property
    def needs_real(self) -> bool:
        return self.data_needs().real is not None

    # ------------------------------------------------------------ losses
    @abstractmethod
    def generator_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        """Scalar loss for the student at generator update ``step`` and its named terms."""

    def aux_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs] | None:
        """Scalar loss for the auxiliary modules, or ``None`` when the method has none."""
        return None

    @torch.no_grad()
    def student_samples(self, batch: Batch) -> Tensor:
        """The student's final outputs for ``batch`` without gradient (for aux updates)."""
        return self.ctx.student.generate(batch.noise, batch.cond,
                                         generator=self.ctx.generator).sample


class FakeScoreMethod(DistillMethod[ConfigT]):
    """A method whose one auxiliary network is a fake score network ``fake`` (a trainable copy
    of the teacher tracking the student's outputs) carrying a GAN logit head when ``use_gan``
    (DMD2, SiD). Subclasses set ``fake`` and ``use_gan`` in ``__init__`` and write the losses;
    the declarations are the same for all of them:

    * data: real samples from the ``gan`` block (``gan.real`` / ``gan.real_source``) when
      ``use_gan``, else noise and condition only;
    * aux updates: the fake denoiser at ``dm.fake_lr`` and its head at ``gan.lr``
      (:func:`~fewstep.distill.parts.fake_score.fake_score_groups`), updated ``train.aux_ratio``
      times per generator update, clipped at ``train.aux_grad_clip``.
    """

    use_gan: bool

    if TYPE_CHECKING:  # SiD assigns it (a submodule), DMD2 reads its matching's: a property
        @property
        def fake(self) -> FakeScore: ...

    def data_needs(self) -> DataNeeds:
        return DataNeeds(real=self.gan_real(self.use_gan))

    def aux_updates(self) -> AuxUpdates:
        dm, gan = dm_section(self.ctx.cfg), gan_section(self.ctx.cfg)
        return self.aux_updates_for(fake_score_groups(self.fake, dm.fake_lr, gan.lr))
