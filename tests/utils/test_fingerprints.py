"""Content fingerprints see a changed weight anywhere in a tensor family, never the path."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from fewstep.utils import fingerprints as fp


def _file(path: Path, scale: float = 1.0) -> Path:
    g = torch.Generator().manual_seed(0)
    t = {f"block{i}.weight": torch.randn(64, 64, generator=g) for i in range(6)}
    t["block3.weight"] = t["block3.weight"] * scale  # a middle tensor
    save_file(t, str(path))
    return path


def test_sampled_fingerprint_sees_a_changed_middle_tensor(tmp_path: Path) -> None:
    a = fp.sampled_fingerprint(_file(tmp_path / "a.safetensors"))
    b = fp.sampled_fingerprint(_file(tmp_path / "b.safetensors", 3.0))
    assert a != b
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "moved.safetensors")
    assert fp.sampled_fingerprint(tmp_path / "moved.safetensors") == a  # content, not path


def test_full_fingerprint_is_memoised_by_path_size_mtime_inode(tmp_path: Path) -> None:
    memo = tmp_path / "memo.json"
    f = _file(tmp_path / "a.safetensors")
    first = fp.full_fingerprint(f, memo)
    assert memo.is_file() and fp.full_fingerprint(f, memo) == first
    time.sleep(0.01)
    _file(tmp_path / "b.safetensors", 3.0)
    os.replace(tmp_path / "b.safetensors", f)  # replaced in place: a new inode and mtime
    assert fp.full_fingerprint(f, memo) != first


def test_module_and_folder_fingerprints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(8)])
    before = fp.module_fingerprint(m)
    with torch.no_grad():
        m[4].weight.mul_(3.0)  # a middle block, outside "first / last 4 parameters"
    assert fp.module_fingerprint(m) != before
    for sub in ("text_encoder", "text_encoder_2"):
        (tmp_path / "pipe" / sub).mkdir(parents=True)
        _file(tmp_path / "pipe" / sub / "model.safetensors")
    a = fp.folder_fingerprint(tmp_path / "pipe")
    _file(tmp_path / "pipe" / "text_encoder_2" / "model.safetensors", 2.0)
    assert fp.folder_fingerprint(tmp_path / "pipe") != a
