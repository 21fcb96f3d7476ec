"""The batch source: what each training batch holds, drawn as the method's
:class:`~fewstep.distill.methods.base.DataNeeds` ask.

* noise and condition: fresh ``N(0, I)`` and the problem's conditions -- or, with
  ``teacher_pairs``, rows of the teacher-sample cache (its noise, condition, the teacher's
  sample and mid-trajectory estimate from that noise);
* ``real`` (for discriminators): rows of the teacher cache, fresh teacher samples
  (``teacher_online``), or the data set's train split.

The teacher cache is *streamed* (:class:`~fewstep.distill.engine.teacher_cache.CacheReader`): its
shards stay on disk, memory-mapped, and each batch's rows are gathered one batch ahead (pinned
memory on CUDA) and copied to the device; which rows batch ``p`` holds depends on the seed and
``p`` only, and ``p`` is checkpointed (:meth:`BatchSource.state_dict`). Every other draw uses
the run's data generator (part of the checkpointed state) in a fixed order, so a resumed run
draws the same batches. With N processes every rank draws the global batch and keeps its
slice (:meth:`DistEnv.shard`; cache rows: only its slice is read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fewstep.distill.config import DistillConfig
from fewstep.distill.context import Batch, DataNeeds
from fewstep.distill.engine.distributed import DistEnv
from fewstep.distill.engine.teacher_cache import CacheReader, TeacherCache
from fewstep.errors import ConfigError
from fewstep.teachers.base import LoadedTeacher


class BatchSource:
    """Draws :class:`Batch` es for one run (call :meth:`prepare` once, then :meth:`next`)."""

    def __init__(self, cfg: DistillConfig, needs: DataNeeds, teacher: LoadedTeacher,
                 mid_sigma: float | None, generator: torch.Generator, dist: DistEnv,
                 device: torch.device) -> None:
        self.cfg, self.needs, self.teacher = cfg, needs, teacher
        self.problem = teacher.problem
        self.mid_sigma = mid_sigma  # the level of the teacher's stored mid-trajectory estimate
        self.gen, self.dist, self.device = generator, dist, device
        self.reader: CacheReader | None = None
        self.data: tuple[Tensor, Tensor | None] | None = None

    def prepare(self, progress: bool = True) -> None:
        """Load / build the teacher cache and load the data set, as far as needed."""
        c = self.cfg
        if self.needs.teacher_cache:
            root = Path(c.cache.dir).expanduser()
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cache.dir: cannot use {root} as a folder ({e.strerror or e})"
                                  ) from None
            p = self.problem
            t = self.teacher
            cache = TeacherCache(
                root, t.denoiser, t.identity, p.data_shape,
                lambda n, g: p.sample_cond(n, g), p.cond_map, steps=c.teacher.steps,
                shift=t.shift, cfg_scale=t.cfg_scale, mid_sigma=self.mid_sigma,
                size=c.cache.size, shard_size=min(c.cache.shard_size, c.cache.size),
                seed=c.train.seed, batch_size=c.cache.batch_size, device=self.device,
                sigmas=t.sigmas, noise_scale=t.noise_scale,
                sampler=t.sample if t.sampler is not None else None)
            b = c.train.batch_size
            self.reader = cache.reader(b, c.train.seed, pairs=self.needs.teacher_pairs,
                                       real=self.needs.real == "teacher_cache",
                                       rows=self.dist.shard_slice(b) if self.dist.enabled
                                       else None, device=self.device, progress=progress,
                                       cond_map=p.cond_map)
        if self.needs.real == "dataset":
            x, y = self.problem.split("train")
            self.data = (x.to(self.device), None if y is None else y.to(self.device))

    @property
    def cache(self) -> dict[str, Tensor] | None:
        """The whole teacher cache as host tensors (a copy: for tests and inspection; training
        reads it through :attr:`reader`)."""
        if self.reader is None:
            return None
        views = self.reader.views
        return {k: torch.cat([v[k] for v in views])[:self.reader.size] for k in views[0]}

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint records to continue the cache stream."""
        return {} if self.reader is None else {"cache_position": self.reader.position}

    def load_state_dict(self, counters: dict[str, Any]) -> None:
        if self.reader is not None:
            self.reader.load_state_dict({"position": int(counters.get("cache_position", 0))})

    def _randint(self, high: int, n: int) -> Tensor:
        return torch.randint(0, high, (n,), generator=self.gen).to(self.device)

    def next(self) -> Batch:
        """This rank's rows of the next global batch."""
        b = self.cfg.train.batch_size
        p = self.problem
        rows = self.reader.next() if self.reader is not None else {}  # this rank's rows
        if self.needs.teacher_pairs:
            cond = rows.get("cond")  # already mapped by the reader (p.cond_map)
            batch = Batch(rows["eps"], cond, teacher_sample=rows["sample"],
                          teacher_mid=rows.get("mid", rows["sample"]))
        else:
            noise = torch.randn((b, *p.data_shape), generator=self.gen).to(self.device)
            batch = Batch(noise, p.cond_map(p.sample_cond(b, self.gen, self.device)))
        real = self.needs.real
        if real == "dataset":
            assert self.data is not None
            j = self._randint(self.data[0].shape[0], b)
            batch.real = self.data[0][j]
            batch.real_cond = None if self.data[1] is None else self.data[1][j]
        elif real == "teacher_cache":
            batch.real = rows["real_sample"]
            batch.real_cond = rows.get("real_cond")
        elif real == "teacher_online":
            batch.real, batch.real_cond = self._online_teacher(b)
        return self.dist.shard(batch, b)  # this rank's rows (online teacher rows already are)

    @torch.no_grad()
    def _online_teacher(self, b: int) -> tuple[Tensor, Any]:
        p = self.problem
        noise = torch.randn((b, *p.data_shape), generator=self.gen).to(self.device)
        cond = p.cond_map(p.sample_cond(b, self.gen, self.device))
        noise, cond = self.dist.shard(noise, b), self.dist.shard(cond, b)  # only this rank's
        return self.teacher.sample(noise, cond).sample, cond
