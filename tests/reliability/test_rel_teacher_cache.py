"""Teacher-sample cache shards that fail their checks are regenerated, never used."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from rel_helpers import flip_byte, truncate

from fewstep.distill.engine.teacher_cache import TeacherCache
from fewstep.errors import CheckpointError
from fewstep.networks.registry import network_denoiser
from fewstep.teachers.training import load_denoiser
from fewstep.utils.files import load_tensors, save_tensors
from fewstep.utils.run_lock import folder_lock


def _cache(teacher: Path, root: Path, **kw) -> TeacherCache:
    den, _ = load_denoiser(teacher)
    args = {"steps": 4, "mid_sigma": 0.5, "size": 250, "shard_size": 100, "seed": 3}
    args.update(kw)
    return TeacherCache(root, den, "teacher-id", (2,), lambda n, g: None, lambda ids: ids,
                        **args)


def test_corrupt_truncated_foreign_and_missing_shards_are_regenerated(
        rel_teacher_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = _cache(rel_teacher_path, tmp_path)
    first = cache.load(progress=False)
    assert first["eps"].shape == (250, 2) and set(first) == {"eps", "sample", "mid"}
    snap = [load_tensors(cache.shard_path(i))[0] for i in range(cache.num_shards)]
    untouched = cache.shard_path(0).stat().st_mtime_ns

    flip_byte(cache.shard_path(1), 40)                   # altered bytes
    with pytest.raises(CheckpointError, match=r"shard_00001.*failed its checksum"):
        load_tensors(cache.shard_path(1))
    truncate(cache.shard_path(2), 0.5)                    # torn file
    caplog.set_level(logging.WARNING)
    again = cache.load(progress=False)
    assert "regenerating shard 1" in caplog.text and "regenerating shard 2" in caplog.text
    for k in first:
        assert torch.equal(first[k], again[k])
    for i in range(cache.num_shards):
        t = load_tensors(cache.shard_path(i))[0]
        assert all(torch.equal(t[k], snap[i][k]) for k in t)
    assert cache.shard_path(0).stat().st_mtime_ns == untouched   # valid shards are kept

    # a *valid* shard copied to another index passes its checksum but is still rejected
    caplog.clear()
    shutil.copy(cache.shard_path(0), cache.shard_path(1))
    again = cache.load(progress=False)
    assert "not shard 1 of this cache" in caplog.text
    assert torch.equal(first["sample"], again["sample"])

    # a file of another kind, and a missing shard
    save_tensors(cache.shard_path(2), {"x": torch.zeros(3)}, "student")
    cache.shard_path(1).unlink()
    caplog.clear()
    again = cache.load(progress=False)
    assert "holds 'student'" in caplog.text
    assert torch.equal(first["mid"], again["mid"])


def test_changed_settings_start_a_new_cache(rel_teacher_path: Path, tmp_path: Path) -> None:
    a = _cache(rel_teacher_path, tmp_path)
    b = _cache(rel_teacher_path, tmp_path, steps=6)
    assert a.dir != b.dir
    a.build(progress=False)
    # b's shard 0 copied from a: valid file, but another cache's settings -> regenerated
    b.dir.mkdir(parents=True)
    shutil.copy(a.shard_path(0), b.shard_path(0))
    out = b.load(progress=False)
    assert not torch.equal(out["sample"][:100], load_tensors(a.shard_path(0))[0]["sample"])


def test_temp_files_of_a_killed_builder_are_removed_under_the_lock(tmp_path: Path) -> None:
    """A builder killed mid-write leaves ``.shard_*.tmp``; the next builder (holding the
    folder lock, so no other process is writing) deletes it and keeps valid shards."""

    net = {"type": "resmlp", "data_shape": [2], "hidden": 16, "depth": 1, "emb": 8,
           "num_classes": 0}
    den = network_denoiser(net, "velocity", "sigma", None).eval()

    def cache() -> TeacherCache:
        return TeacherCache(tmp_path, den, "t", (2,), lambda n, g: None, lambda c: c, steps=2,
                            size=8, shard_size=4, batch_size=4)

    c = cache()
    c.build(progress=False)
    first = c.shard_path(0).read_bytes()
    torn = c.dir / ".shard_00001.safetensors.abc123.tmp"
    torn.write_bytes(b"half a shard")
    c.shard_path(1).unlink()
    cache().build(progress=False)
    assert not torn.exists() and c.shard_path(1).is_file()
    assert c.shard_path(0).read_bytes() == first
    with folder_lock(c.dir) as held:  # free again once a build is done
        assert held
