"""Sizes checked before anything is allocated: a request that cannot fit is a one-line error
naming the field, the figure needed and the figure available -- not an allocator traceback
minutes later, or a disk filled with cache shards.

Available memory: on CUDA the device's free memory (``torch.cuda.mem_get_info``); elsewhere
``MemAvailable`` of ``/proc/meminfo`` (or the physical memory), capped by the address-space
limit (``RLIMIT_AS``) less what the process already maps. Disk: ``shutil.disk_usage``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
from pathlib import Path

import torch

from fewstep.errors import ConfigError

GIB = 1024 ** 3


def _mem_available() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return None


def _address_space_left() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
    return max(0, soft - used)


def available_memory(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on ``device`` (``None``: unknown, e.g. MPS)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count():
            return None  # the device check reports it (one line naming the field)
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type != "cpu":
        return None
    figures = [v for v in (_mem_available(), _address_space_left()) if v is not None]
    return min(figures) if figures else None


def gib(n: float) -> str:
    """``n`` bytes as GiB, readable at every scale (``0.012``, ``3.4``, ``9.7e+07``)."""
    v = n / GIB
    return f"{v:.3g}" if v < 1e6 else f"{v:.2g}"


def check_memory(needed: float, device: torch.device | str, field: str, what: str) -> None:
    """Refuse (one line, exit 2) when ``needed`` bytes exceed the memory available on
    ``device``; ``what`` says what the figure covers."""
    have = available_memory(device)
    if have is not None and needed > have:
        where = "the GPU" if torch.device(device).type == "cuda" else "this machine"
        raise ConfigError(f"{field}: needs about {gib(needed)} GiB ({what}); {where} has "
                          f"{gib(have)} GiB available")


def check_disk(needed: float, folder: str | os.PathLike[str], field: str, what: str,
               reusable: float = 0.0) -> None:
    """Refuse when ``needed`` bytes exceed the free space of ``folder``'s file system plus
    ``reusable`` bytes already there (e.g. an existing cache)."""
    p = Path(folder).expanduser()
    for a in (p, *p.parents):
        if a.exists():
            free = shutil.disk_usage(a).free
            break
    else:
        return
    if needed > free + reusable:
        raise ConfigError(f"{field}: needs about {gib(needed)} GiB of disk ({what}); {a} has "
                          f"{gib(free)} GiB free")


def folder_bytes(folder: str | os.PathLike[str]) -> int:
    """Total size of the regular files below ``folder`` (0 if absent)."""
    total = 0
    p = Path(folder).expanduser()
    if p.is_dir():
        for f in p.rglob("*"):
            with contextlib.suppress(OSError):
                if f.is_file() and not f.is_symlink():
                    total += f.stat().st_size
    return total


__all__ = ["GIB", "available_memory", "check_disk", "check_memory", "folder_bytes", "gib"]
