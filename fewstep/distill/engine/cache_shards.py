"""Teacher-cache shards read by rows, verified for as long as a run reads them.

A shard is verified once when a run opens it (checksum, kind, "shard ``i`` of this cache":
:meth:`~fewstep.distill.engine.teacher_cache.TeacherCache.load_shard`), then read row by row
with ``os.pread`` from the file descriptor opened *before* that verification -- never through
a memory map, which would silently read zeros past a truncation (or die of ``SIGBUS``).
Before and after every read the descriptor's size and modification time are compared with the
verified ones, and a short read is an error: a shard truncated or rewritten in place while the
run reads it stops the run with one line (:class:`~fewstep.errors.CheckpointError`; ``--resume``
rebuilds it). A shard *replaced* by a rename does not disturb the run: the descriptor still
reads the verified file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from fewstep.errors import CheckpointError

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class VerifiedShard:
    """One verified shard: ``keys()``, ``shard[key]`` (the whole field, read and checked) and
    :meth:`rows` (selected rows). ``verify()`` checks the file by its path (raises
    :class:`CheckpointError`)."""

    def __init__(self, path: str | Path, verify: Callable[[], object]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(self._fd)
            verify()
            now = os.stat(self.path)
            if (now.st_ino, now.st_size, now.st_mtime_ns) != (st.st_ino, st.st_size,
                                                             st.st_mtime_ns):
                raise CheckpointError(f"teacher cache: {self.path} changed while it was "
                                      "verified; run again")
            self._stat = (st.st_size, st.st_mtime_ns)
            self.fields = self._header()
        except BaseException:
            os.close(self._fd)
            raise

    def _read(self, n: int, offset: int) -> bytes:
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise self._changed("it is shorter than when it was verified")
        return data

    def _header(self) -> dict[str, tuple[torch.dtype, tuple[int, ...], int]]:
        n = int.from_bytes(self._read(8, 0), "little")
        header = json.loads(self._read(n, 8))
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, _ = info["data_offsets"]
            out[name] = (_DTYPES[info["dtype"]], tuple(info["shape"]), 8 + n + int(start))
        return out

    def _changed(self, why: str) -> CheckpointError:
        return CheckpointError(f"teacher cache: {self.path} changed while this run read it "
                               f"({why}); the run stops here -- continue with --resume (the "
                               "shard is verified and rebuilt)")

    def check(self) -> None:
        """:class:`CheckpointError` if the file changed since it was verified."""
        st = os.fstat(self._fd)
        if (st.st_size, st.st_mtime_ns) != self._stat:
            raise self._changed(f"size {self._stat[0]} -> {st.st_size} bytes" if
                                st.st_size != self._stat[0] else "rewritten in place")

    def keys(self) -> list[str]:
        return list(self.fields)

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __contains__(self, key: object) -> bool:
        return key in self.fields

    def row_shape(self, key: str) -> tuple[int, ...]:
        return self.fields[key][1][1:]

    def dtype(self, key: str) -> torch.dtype:
        return self.fields[key][0]

    def rows(self, key: str, idx: Tensor) -> Tensor:
        """Rows ``idx`` (within the shard) of field ``key`` as a fresh tensor."""
        dtype, shape, base = self.fields[key]
        row = shape[1:]
        per = dtype.itemsize
        for s in row:
            per *= s
        self.check()
        buf = bytearray(per * len(idx))
        for j, i in enumerate(idx.tolist()):
            if not 0 <= i < shape[0]:
                raise IndexError(f"row {i} of {self.path} ({shape[0]} rows)")
            buf[j * per:(j + 1) * per] = self._read(per, base + i * per)
        self.check()
        if not buf:
            return torch.empty((0, *row), dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(len(idx), *row)

    def __getitem__(self, key: str) -> Tensor:
        return self.rows(key, torch.arange(self.fields[key][1][0]))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()


__all__ = ["VerifiedShard"]
