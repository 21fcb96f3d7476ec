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

Training reads the cache through :class:`CacheReader` (:meth:`TeacherCache.reader`): the shards
stay on disk, and only each batch's rows are read (``os.pread`` on descriptors opened when the
shards were verified: :class:`~fewstep.distill.engine.cache_shards.VerifiedShard`; a shard
truncated or rewritten while the run reads it stops the run with one line, it is never used)
-- into pinned memory when training on CUDA, then to the device without blocking -- by a
background thread one batch ahead. Nothing moves to the device wholesale: the cache costs host
page cache, not device memory.

The key's teacher part is the teacher's content identity
(:func:`fewstep.teachers.base.identity_of`, or a denoiser file's tensor digest), never its
path: a teacher replaced in place gets a new cache.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fewstep.core.denoiser import Denoiser
from fewstep.core.levels import teacher_sigmas
from fewstep.core.noise_correction import default_noise_correction
from fewstep.core.samplers import Trajectory, euler_sample
from fewstep.distill.engine.cache_shards import VerifiedShard
from fewstep.errors import CheckpointError
from fewstep.utils.files import atomic_write_bytes, load_tensors, save_tensors
from fewstep.utils.run_lock import folder_lock

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
        sampler: the teacher's own sampler ``(noise, cond) -> Trajectory`` (e.g.
            :meth:`~fewstep.teachers.base.LoadedTeacher.sample` of a pipeline teacher, which
            steps the pipeline's scheduler); ``None``: Euler at ``sigmas``.
    """

    def __init__(self, root: str | Path, teacher: Denoiser, teacher_id: str,
                 data_shape: tuple[int, ...], cond_sampler: CondSampler, cond_map: CondMap,
                 steps: int = 8, shift: float = 1.0, cfg_scale: float = 1.0,
                 mid_sigma: float | None = None, size: int = 10000, shard_size: int = 2000,
                 seed: int = 0, batch_size: int = 1000, device: str | torch.device = "cpu",
                 sigmas: Tensor | None = None, noise_scale: float = 1.0,
                 sampler: Callable[[Tensor, Any], Trajectory] | None = None) -> None:
        self.teacher = teacher
        self.data_shape = tuple(data_shape)
        self.cond_sampler, self.cond_map = cond_sampler, cond_map
        uniform = teacher_sigmas(steps, shift)
        # the teacher's own N + 1 levels (``teacher.levels``) and its first input's scale
        self.sigmas = uniform if sigmas is None else sigmas.float().cpu()
        self.noise_scale = float(noise_scale)
        corrected = default_noise_correction(teacher)  # euler_sample's default for eps models
        self.cfg_scale = cfg_scale
        self.mid_index = None
        if mid_sigma is not None:
            self.mid_index = int((self.sigmas[:-1] - mid_sigma).abs().argmin())
        self.size, self.shard_size, self.seed = size, shard_size, seed
        self.batch_size, self.device = batch_size, torch.device(device)
        spec = {"teacher": teacher_id, "shape": list(self.data_shape), "steps": steps,
                "shift": shift, "cfg_scale": cfg_scale, "mid_index": self.mid_index,
                "shard_size": shard_size, "seed": seed}
        # keys only when they differ from the defaults: existing caches keep their fingerprint
        if not torch.allclose(self.sigmas, uniform):
            spec["sigmas"] = [round(float(v), 8) for v in self.sigmas]
        if self.noise_scale != 1.0:
            spec["noise_scale"] = self.noise_scale
        if corrected:
            spec["noise_correction"] = True
        self.sampler = sampler  # the teacher's own sampler (a pipeline's scheduler)
        if sampler is not None:
            spec["sampler"] = "teacher's own"
        self.fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        self.dir = Path(root) / self.fingerprint[:16]
        self.spec = spec
        self._verified: dict[int, tuple[int, int, int]] = {}  # shard -> (inode, size, mtime)

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
            if self.sampler is not None:
                traj = self.sampler(e, self.cond_map(c))
            else:
                traj = euler_sample(self.teacher, e * self.noise_scale, self.cond_map(c),
                                    self.sigmas, self.cfg_scale)
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

    def _stat(self, i: int) -> tuple[int, int, int]:
        st = os.stat(self.shard_path(i))
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _shard_ok(self, i: int) -> bool:
        if not self.shard_path(i).exists():
            return False
        try:
            before = self._stat(i)
            self.load_shard(i)
            if self._stat(i) == before:
                self._verified[i] = before
            return True
        except CheckpointError as e:
            log.warning("teacher cache: %s; regenerating shard %d", e, i)
            return False

    def _verify(self, i: int) -> None:
        """Shard ``i`` is the file :meth:`build` verified, or it is verified again now."""
        if self._verified.get(i) != self._stat(i):
            self.load_shard(i)

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
                self._verified.pop(i, None)

    def load(self, progress: bool = True) -> dict[str, Tensor]:
        """Build what is missing, then return all entries concatenated (first ``size``)."""
        self.build(progress)
        parts = [self.load_shard(i) for i in range(self.num_shards)]
        return {k: torch.cat([p[k] for p in parts])[:self.size] for k in parts[0]}

    def reader(self, batch_size: int, seed: int, pairs: bool = True, real: bool = False,
               rows: slice | None = None, device: str | torch.device = "cpu",
               progress: bool = True, prefetch: bool = True,
               cond_map: CondMap | None = None) -> CacheReader:
        """Build what is missing (verifying every shard's checksum), then a streaming
        :class:`CacheReader` over the verified shards (see its docstring)."""
        self.build(progress)
        views = [VerifiedShard(self.shard_path(i), functools.partial(self._verify, i))
                 for i in range(self.num_shards)]
        return CacheReader(views, self.size, self.shard_size, batch_size, seed, pairs=pairs,
                           real=real, rows=rows, device=device, prefetch=prefetch,
                           cond_map=cond_map)


class CacheReader:
    """Batches of cache rows, streamed from verified shards (read by rows, checked on read).

    Which rows batch ``p`` (the ``p``-th call of :meth:`next`, counted from 0) holds is a pure
    function of ``(seed, p)``: ``batch_size`` indices uniform over the cache (the pair rows:
    ``eps``, ``sample``, ``mid``, ``cond``) and, with ``real``, another ``batch_size`` (the
    "real" rows of a discriminator: ``real_sample``, ``real_cond``). So the stream is
    deterministic, the next batch can be fetched while the current one trains, and resuming
    only needs :attr:`position` (:meth:`state_dict`), which checkpoints record. Every
    data-parallel rank draws the same global indices and reads only its ``rows`` slice of them.

    Rows are read (``os.pread``, checked: :class:`VerifiedShard`) into pinned host memory when
    ``device`` is CUDA and copied with ``non_blocking=True``; on CPU the gathered tensors are
    the batch. One background thread prepares batch ``p + 1`` while batch ``p`` trains.
    ``cond_map`` (optional) turns the host ``cond`` / ``real_cond`` ids into what the teacher
    takes (e.g. prompt ids -> padded prompt embeddings from the prompt cache) in that thread,
    so the main thread never copies ids back to the host; a result with ``pin_memory`` is
    pinned too.
    """

    def __init__(self, views: list[VerifiedShard], size: int, shard_size: int,
                 batch_size: int, seed: int, pairs: bool = True, real: bool = False,
                 rows: slice | None = None, device: str | torch.device = "cpu",
                 prefetch: bool = True, cond_map: CondMap | None = None) -> None:
        self.cond_map = cond_map
        self.views, self.size, self.shard_size = views, size, shard_size
        self.batch_size, self.seed = batch_size, seed
        self.pairs, self.real = pairs, real
        self.rows = rows or slice(0, batch_size)
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self.position = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cache") if prefetch else None
        self._ahead: tuple[int, Future] | None = None

    # -- the index stream -----------------------------------------------------------------
    def indices(self, position: int) -> dict[str, Tensor]:
        """The global row indices of batch ``position`` (``pairs`` / ``real`` keys)."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + 7 * position) % (1 << 62))
        out = {}
        if self.pairs:
            out["pairs"] = torch.randint(0, self.size, (self.batch_size,), generator=g)
        if self.real:
            out["real"] = torch.randint(0, self.size, (self.batch_size,), generator=g)
        return out

    def gather(self, idx: Tensor, keys: list[str] | None = None) -> dict[str, Tensor]:
        """Rows ``idx`` (global cache indices) of every field, as fresh host tensors (pinned
        for CUDA)."""
        first = self.views[0]
        keys = list(first) if keys is None else keys
        shard, row = idx // self.shard_size, idx % self.shard_size
        out = {k: torch.empty((len(idx), *first.row_shape(k)), dtype=first.dtype(k),
                              pin_memory=self.pin) for k in keys}
        for s in shard.unique().tolist():
            sel = (shard == s).nonzero().squeeze(1)
            for k in keys:
                out[k][sel] = self.views[s].rows(k, row[sel])
        return out

    def _load(self, position: int) -> dict[str, Any]:
        idx = self.indices(position)
        out: dict[str, Tensor] = {}
        if "pairs" in idx:
            out.update(self.gather(idx["pairs"][self.rows]))
        if "real" in idx:
            keys = [k for k in ("sample", "cond") if k in self.views[0]]
            out.update({f"real_{k}": v for k, v in
                        self.gather(idx["real"][self.rows], keys).items()})
        if self.cond_map is not None:
            for k in ("cond", "real_cond"):
                if k in out:
                    c = self.cond_map(out[k])
                    out[k] = c.pin_memory() if self.pin and hasattr(c, "pin_memory") else c
        return out

    def _fetch(self, position: int) -> Future | dict[str, Tensor]:
        if self._ahead is not None and self._ahead[0] == position:
            return self._ahead[1]
        if self._pool is None:
            return self._load(position)
        return self._pool.submit(self._load, position)

    def next(self) -> dict[str, Any]:
        """Batch :attr:`position` on ``device`` (this rank's rows); advances the position."""
        got = self._fetch(self.position)
        host = got.result() if isinstance(got, Future) else got
        self.position += 1
        if self._pool is not None:
            self._ahead = (self.position, self._pool.submit(self._load, self.position))
        return {k: v if v is None else v.to(self.device, non_blocking=self.pin)
                for k, v in host.items()}

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        """Continue at ``sd["position"]`` (a prefetched batch of another position is dropped)."""
        self.position = int(sd["position"])
        self._ahead = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for v in self.views:
            v.close()
