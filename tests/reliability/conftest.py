"""Fixtures for the reliability tests.

The tests run with one torch thread: the CI machine's two cores are shared, and two OpenMP
threads on oversubscribed cores are several times slower than one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rel_helpers import one_thread

from fewstep.teachers.training import NetworkConfig, TeacherConfig, train_teacher


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def rel_teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkerboard velocity teacher (300 steps, a few seconds on one thread)."""
    path = tmp_path_factory.mktemp("rel_teacher") / "checkerboard.safetensors"
    cfg = TeacherConfig(data="checkerboard", network=NetworkConfig(hidden=64, depth=2, emb=32),
                        steps=300, batch_size=256, warmup=50)
    with one_thread():
        train_teacher(cfg, path, progress=False)
    return path


@pytest.fixture(scope="session")
def rel_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One teacher-sample cache folder shared by the reliability tests (content-addressed)."""
    return tmp_path_factory.mktemp("teacher_cache")
