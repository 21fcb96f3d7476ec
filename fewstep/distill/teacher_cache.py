"""A sharded, checksummed, resumable cache of teacher generations.

Each entry is one teacher run from noise ``eps`` (``(B, ...)``) with condition ``cond``
(labels or prompt ids, ``(B,)`` long, or absent): the N-step Euler sample ``sample`` and the
teacher's x0 estimate ``mid`` at the step whose input level is nearest ``mid_sigma`` (the target
of Turbo++'s ``teacher_traj`` step-1 loss).

Layout: ``root/<fingerprint>/shard_00000.safetensors ...`` plus ``fingerprint.json``. The
fingerprint hashes the teacher's identity, the sampling settings and the seed, so changing any
of them starts a new cache and an unchanged run reuses the old one. Shard ``i`` is generated
from its own seed, so a shard that is missing or fails its checksum is regenerated to the same
content; a run stopped half-way resumes at the first missing shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fewstep.denoiser import Denoiser
from fewstep.distill.run_lock import folder_lock
from fewstep.errors import CheckpointError
from fewstep.io import atomic_write_bytes, load_tensors, save_tensors
from fewstep.samplers import euler_sample
from fewstep.schedules import teacher_sigmas

log = logging.getLogger(__name__)

CondSampler = Callable[[int, torch.Generator], "Tensor | None"]
CondMap = Callable[["Tensor | None"], Any]


class TeacherCache:
    """Build-or-load teacher samples.

    Args:
        root: folder holding caches (one sub-folder per fingerprint).
        teacher: frozen denoiser.
        teacher_id: a string identifying the teacher weights (e.g. its file checksum).
        data_shape: shape of one sample.
        cond_sampler: ``(n, generator) -> (n,) long or None``: the stored condition ids.
        cond_map: ids -> what the teacher takes as ``cond`` (identity for labels).
        steps / shift / cfg_scale: the teacher's sampler.
        mid_sigma: level for the ``mid`` estimate (``None``: not stored).
        size / shard_size / seed: how many entries, per shard, and the base seed.
    """

    def __init__(self, root: str | Path, teacher: Denoiser, teacher_id: str,
                 data_shape: tuple[int, ...], cond_sampler: CondSampler, cond_map: CondMap,
                 steps: int = 8, shift: float = 1.0, cfg_scale: float = 1.0,
                 mid_sigma: float | None = None, size: int = 10000, shard_size: int = 2000,
                 seed: int = 0, batch_size: int = 1000, device: str | torch.device = "cpu"
                 ) -> None:
        self.teacher = teacher
        self.data_shape = tuple(data_shape)
        self.cond_sampler, self.cond_map = cond_sampler, cond_map
        self.sigmas = teacher_sigmas(steps, shift)
        self.cfg_scale = cfg_scale
        self.mid_index = None
        if mid_sigma is not None:
            self.mid_index = int((self.sigmas[:-1] - mid_sigma).abs().argmin())
        self.size, self.shard_size, self.seed = size, shard_size, seed
        self.batch_size, self.device = batch_size, torch.device(device)
        spec = {"teacher": teacher_id, "shape": list(self.data_shape), "steps": steps,
                "shift": shift, "cfg_scale": cfg_scale, "mid_index": self.mid_index,
                "shard_size": shard_size, "seed": seed}
        self.fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        self.dir = Path(root) / self.fingerprint[:16]
        self.spec = spec

    @property
    def num_shards(self) -> int:
        return (self.size + self.shard_size - 1) // self.shard_size

    def shard_path(self, i: int) -> Path:
        return self.dir / f"shard_{i:05d}.safetensors"

    @torch.no_grad()
    def _generate_shard(self, i: int) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        n = self.shard_size
        eps = torch.randn((n, *self.data_shape), generator=gen)
        ids = self.cond_sampler(n, gen)
        out: dict[str, Tensor] = {"eps": eps}
        samples, mids = [], []
        for s in range(0, n, self.batch_size):
            e = eps[s:s + self.batch_size].to(self.device)
            c = None if ids is None else ids[s:s + self.batch_size].to(self.device)
            traj = euler_sample(self.teacher, e, self.cond_map(c), self.sigmas, self.cfg_scale)
            samples.append(traj.sample.float().cpu())
            if self.mid_index is not None:
                mids.append(traj.x0s[self.mid_index].float().cpu())
        out["sample"] = torch.cat(samples)
        if mids:
            out["mid"] = torch.cat(mids)
        if ids is not None:
            out["cond"] = ids
        return out

    def load_shard(self, i: int) -> dict[str, Tensor]:
        """Shard ``i``, verified: checksum, kind, and that it is shard ``i`` of *this* cache
        (a valid shard copied from another index or cache is rejected) with the right size.
        Raises :class:`CheckpointError`."""
        p = self.shard_path(i)
        tensors, config = load_tensors(p, kind="teacher_cache_shard")
        if config != {"index": i, **self.spec}:
            raise CheckpointError(f"{p} is not shard {i} of this cache (its settings differ)")
        if not tensors or any(t.shape[0] != self.shard_size for t in tensors.values()):
            raise CheckpointError(f"{p} does not hold {self.shard_size} entries")
        return tensors

    def _shard_ok(self, i: int) -> bool:
        if not self.shard_path(i).exists():
            return False
        try:
            self.load_shard(i)
            return True
        except CheckpointError as e:
            log.warning("teacher cache: %s; regenerating shard %d", e, i)
            return False

    def build(self, progress: bool = True) -> None:
        """Generate every missing or corrupt shard (already-valid shards are kept).

        One process builds a cache folder at a time (``flock`` on ``.lock`` in it; another run
        sharing the cache waits, then finds the shards valid). The builder holding the lock
        deletes temp files that killed builders left behind."""
        with contextlib.suppress(OSError):  # read-only: load what is there, or fail on write
            self.dir.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.dir) as held:
            if held:
                for p in self.dir.iterdir():
                    if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
                        p.unlink(missing_ok=True)
            fp = self.dir / "fingerprint.json"
            text = json.dumps(self.spec, indent=1, sort_keys=True).encode()
            if not (fp.is_file() and fp.read_bytes() == text):
                atomic_write_bytes(fp, text)
            todo = [i for i in range(self.num_shards) if not self._shard_ok(i)]
            for i in tqdm(todo, desc="teacher cache", disable=not progress or not todo):
                save_tensors(self.shard_path(i), self._generate_shard(i),
                             "teacher_cache_shard", {"index": i, **self.spec})

    def load(self, progress: bool = True) -> dict[str, Tensor]:
        """Build what is missing, then return all entries concatenated (first ``size``)."""
        self.build(progress)
        parts = [self.load_shard(i) for i in range(self.num_shards)]
        return {k: torch.cat([p[k] for p in parts])[:self.size] for k in parts[0]}
