"""The streamed teacher cache: verified shards read by rows, deterministic batches, resumable."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from fewstep.core.conditioning import PromptEmbeds
from fewstep.core.denoiser import Denoiser
from fewstep.distill.engine.teacher_cache import CacheReader, TeacherCache
from fewstep.utils.files import load_tensors, mmap_safetensors


class _Toy(Denoiser):
    """A tiny deterministic denoiser on 2-d points."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: object = None) -> torch.Tensor:
        s = sigma.reshape(-1, 1).expand(x.shape[0], 1)
        return self.lin(torch.cat([x, s], 1))


def _cache(tmp: Path, size: int = 10, shard: int = 4) -> TeacherCache:
    torch.manual_seed(0)
    return TeacherCache(tmp, _Toy().requires_grad_(False), "toy", (2,),
                        lambda n, g: torch.randint(0, 3, (n,), generator=g), lambda c: c,
                        steps=2, mid_sigma=0.5, size=size, shard_size=shard, seed=3,
                        batch_size=4)


def test_mmap_views_equal_the_verified_shard(tmp_path: Path) -> None:
    c = _cache(tmp_path)
    c.build(progress=False)
    views = mmap_safetensors(c.shard_path(1))
    loaded, _ = load_tensors(c.shard_path(1))
    assert set(views) == set(loaded) == {"eps", "sample", "mid", "cond"}
    for k in views:
        assert torch.equal(views[k], loaded[k]), k
    # a view, not a copy: its storage is the mapped file
    assert views["eps"].untyped_storage().data_ptr() != loaded["eps"].untyped_storage().data_ptr()


def test_reader_rows_match_the_loaded_cache_and_resume(tmp_path: Path) -> None:
    c = _cache(tmp_path)
    full = c.load(progress=False)
    r = c.reader(batch_size=6, seed=11, real=True, progress=False)
    batches = [r.next() for _ in range(5)]
    for p, b in enumerate(batches):
        idx = r.indices(p)
        for k in ("eps", "sample", "mid", "cond"):
            assert torch.equal(b[k], full[k][idx["pairs"]]), (p, k)
        assert torch.equal(b["real_sample"], full["sample"][idx["real"]])
        assert torch.equal(b["real_cond"], full["cond"][idx["real"]])
    assert not all(torch.equal(batches[0]["eps"], b["eps"]) for b in batches[1:])
    # resume at position 3 (what a checkpoint records) gives the same batches 3, 4
    state = {"position": 3}
    r2 = c.reader(batch_size=6, seed=11, real=True, progress=False, prefetch=False)
    r2.load_state_dict(state)
    for b in batches[3:]:
        got = r2.next()
        assert all(torch.equal(got[k], b[k]) for k in b)
    r.close()


def test_reader_maps_condition_ids_in_its_loading_thread(tmp_path: Path) -> None:
    """``cond_map`` (prompt ids -> embeddings in a real run) runs on the host ids in the
    prefetch thread, for the pair rows and the "real" rows alike."""
    c = _cache(tmp_path)
    full = c.load(progress=False)
    threads: list[str] = []

    def embed(ids: torch.Tensor) -> PromptEmbeds:
        threads.append(threading.current_thread().name)
        assert ids.device.type == "cpu"
        return PromptEmbeds(ids.float()[:, None, None].expand(-1, 2, 3).clone(),
                            torch.ones(len(ids), 2, dtype=torch.bool))

    r = c.reader(batch_size=6, seed=11, real=True, progress=False, cond_map=embed)
    for p in range(3):
        b, idx = r.next(), r.indices(p)
        for key, rows in (("cond", idx["pairs"]), ("real_cond", idx["real"])):
            assert isinstance(b[key], PromptEmbeds)
            assert torch.equal(b[key].embeds[:, 0, 0], full["cond"][rows].float()), (p, key)
    r.close()
    assert threads and all(t.startswith("cache") for t in threads)


def test_ranks_read_their_slice(tmp_path: Path) -> None:
    c = _cache(tmp_path)
    whole = c.reader(batch_size=4, seed=1, progress=False)
    halves = [CacheReader(whole.views, c.size, c.shard_size, 4, 1, rows=slice(2 * r, 2 * r + 2))
              for r in (0, 1)]
    for _ in range(3):
        w = whole.next()
        parts = [h.next() for h in halves]
        assert torch.equal(torch.cat([p["eps"] for p in parts]), w["eps"])


def test_reader_rows_equal_the_verified_shards(tmp_path: Path) -> None:
    c = _cache(tmp_path)
    whole = c.load(progress=False)
    r = c.reader(batch_size=5, seed=2, progress=False, prefetch=False)
    for p in range(3):
        idx = r.indices(p)["pairs"]
        b = r.next()
        for k in ("eps", "sample", "mid", "cond"):
            assert torch.equal(b[k], whole[k][idx]), (p, k)
    r.close()


def test_a_shard_truncated_while_read_stops_the_run_in_one_line(tmp_path: Path) -> None:
    """A shard rewritten in place after it was verified is never read (a memory map would have
    served zeros, or died of SIGBUS): the reader stops with a CheckpointError naming it."""
    import pytest

    from fewstep.errors import CheckpointError

    c = _cache(tmp_path, size=12, shard=4)
    r = c.reader(batch_size=6, seed=1, progress=False, prefetch=False)
    r.next()
    for i in range(c.num_shards):
        f = c.shard_path(i)
        data = f.read_bytes()
        with open(f, "r+b") as fh:  # in place: the same inode
            fh.truncate(len(data) // 2)
    with pytest.raises(CheckpointError, match="changed while this run read it"):
        r.next()
    r.close()
    c.build(progress=False)  # a later run (or --resume) rebuilds the shards
    assert all(c._shard_ok(i) for i in range(c.num_shards))


def test_a_shard_replaced_by_rename_keeps_serving_the_verified_file(tmp_path: Path) -> None:
    import os

    c = _cache(tmp_path, size=8, shard=4)
    whole = c.load(progress=False)
    r = c.reader(batch_size=4, seed=5, progress=False, prefetch=False)
    other = tmp_path / "other.safetensors"
    other.write_bytes(c.shard_path(0).read_bytes()[:100])
    os.replace(other, c.shard_path(0))  # a foreign file at the path: not what the run opened
    idx = r.indices(0)["pairs"]
    assert torch.equal(r.next()["sample"], whole["sample"][idx])
    r.close()
