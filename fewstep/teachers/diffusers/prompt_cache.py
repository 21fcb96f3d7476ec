"""Prompt embeddings computed once by a custom teacher's encoder (``CustomTeacher.encode_prompts``)
and cached on disk in checksummed safetensors shards.

Layout of a cache folder::

    manifest.json            format, fingerprint, prompt-file sha256, shard size, shard names
    null.safetensors         the empty prompt "" (always present, for CFG)
    shard_00000.safetensors  prompts 0 .. N-1 (tensor "p<index>" of shape (L_i, D))
    shard_00001.safetensors  prompts N .. 2N-1
    ...

Every shard's safetensors metadata holds ``sha256`` (over its tensors' names, dtypes, shapes
and bytes), the cache ``fingerprint`` and its ``start``/``end`` prompt indices. A shard that is
missing, unreadable, or fails any of these checks is regenerated from the encoder and never
used as is. A cache is reused across runs when the prompt file's content (sha256) and the
*encoder fingerprint* match; otherwise it is rebuilt from scratch.

The fingerprint identifies the encoder; the caller gives it (a custom teacher's: its builder
and weights). Diffusers pipelines use their own cache, keyed on every text encoder, tokenizer
and option (:mod:`fewstep.teachers.diffusers.conditioning_cache`).

Prompt file: UTF-8, one prompt per line; surrounding whitespace is stripped and blank lines are
skipped. Prompt ``i`` is the ``i``-th non-blank line.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from fewstep.core.conditioning import PromptEmbeds
from fewstep.utils.files import mmap_safetensors

#: ``encode_fn(prompts) -> [(L_i, D), ...]``, one tensor per prompt, or ``[((L_i, D), (P,)),
#: ...]`` with a pooled vector per prompt (stored as ``q<index>``).
EncodeFn = Callable[[list[str]], list[Any]]

FORMAT = "fewstep-prompt-cache-v1"
NULL_SHARD = "null.safetensors"


def read_prompt_file(path: str | os.PathLike[str]) -> list[str]:
    """Non-blank, stripped lines of a UTF-8 prompt file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip()]


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in sorted name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _atomic_save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata=metadata)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------
class PromptCache:
    """Sharded, checksummed cache of per-prompt embeddings (see module docstring).

    Args:
        cache_dir: folder for the manifest and shards (created if missing).
        prompt_file: one prompt per line.
        encode_fn: computes embeddings for missing/corrupt shards; may be ``None`` for a
            read-only cache (a bad shard then raises).
        fingerprint: the encoder identity (e.g. :func:`encoder_fingerprint`).
        shard_size: prompts per shard.
        batch_size: prompts per ``encode_fn`` call.
        dtype: storage dtype (default: whatever ``encode_fn`` returns).
        verify_on_open: check (and repair) every shard now; otherwise on first use.
        max_shards_in_memory: verified shards kept mapped (least recently used unmapped; an
            unmapped shard is verified again on its next use); ``None``: all. Shards are
            memory-mapped, not loaded: only the pages a batch reads are in memory, and the
            kernel can drop them again.

    Attributes:
        prompts: the prompt strings; ``regenerated``: names of shards written this session.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], prompt_file: str | os.PathLike[str],
                 encode_fn: EncodeFn | None, fingerprint: str, shard_size: int = 256,
                 batch_size: int = 16, dtype: torch.dtype | None = None,
                 verify_on_open: bool = True, max_shards_in_memory: int | None = None) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prompt_file = Path(prompt_file)
        self.prompts = read_prompt_file(self.prompt_file)
        self.prompt_sha256 = hashlib.sha256(self.prompt_file.read_bytes()).hexdigest()
        self.encode_fn = encode_fn
        self.fingerprint = fingerprint
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.dtype = dtype
        self.max_shards_in_memory = max_shards_in_memory
        self.regenerated: list[str] = []
        self._loaded: OrderedDict[str, dict[str, Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self._null: Tensor | None = None
        self._open()
        if verify_on_open:
            self.verify()

    # -- bookkeeping --------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return (len(self.prompts) + self.shard_size - 1) // self.shard_size

    def shard_names(self) -> list[str]:
        return [f"shard_{i:05d}.safetensors" for i in range(self.num_shards)]

    def _range(self, name: str) -> tuple[int, int]:
        if name == NULL_SHARD:
            return (-1, 0)
        i = int(name[len("shard_"):-len(".safetensors")])
        return i * self.shard_size, min((i + 1) * self.shard_size, len(self.prompts))

    def _manifest(self) -> dict[str, Any]:
        return {"format": FORMAT, "fingerprint": self.fingerprint,
                "prompt_file_sha256": self.prompt_sha256, "num_prompts": len(self.prompts),
                "shard_size": self.shard_size, "shards": self.shard_names(),
                "null_shard": NULL_SHARD}

    def _open(self) -> None:
        """Reuse the folder if its manifest matches, else clear our old shards and start over."""
        path = self.dir / "manifest.json"
        want = self._manifest()
        old: dict[str, Any] | None = None
        if path.exists():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                old = None
        if old != want:
            for f in self.dir.glob("*.safetensors"):
                if f.name == NULL_SHARD or f.name.startswith("shard_"):
                    f.unlink()
            _atomic_write_text(json.dumps(want, indent=1), path)

    def _check(self, name: str) -> dict[str, Tensor] | None:
        """Load and verify a shard; ``None`` if it is missing or fails any check."""
        path = self.dir / name
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = mmap_safetensors(path)  # verified below, then used in place
        except Exception:  # any parse failure means the shard is unusable
            return None
        start, end = self._range(name)
        keys = {"null"} if name == NULL_SHARD else {f"p{i}" for i in range(start, end)}
        ok = (meta.get("fingerprint") == self.fingerprint
              and meta.get("prompt_file_sha256") == self.prompt_sha256
              and meta.get("start") == str(start) and meta.get("end") == str(end)
              and set(tensors) in (keys, keys | {"q" + k for k in keys})
              and meta.get("sha256") == tensors_sha256(tensors))
        return tensors if ok else None

    def _encode(self, prompts: Sequence[str]) -> list[Tensor | tuple[Tensor, ...]]:
        if self.encode_fn is None:
            raise RuntimeError(f"prompt cache {self.dir} needs regeneration but has no encode_fn")
        out: list[Any] = []
        for i in range(0, len(prompts), self.batch_size):
            out.extend(self.encode_fn(list(prompts[i:i + self.batch_size])))

        def fix(t: Tensor) -> Tensor:
            t = t.to(self.dtype) if self.dtype is not None else t
            return t.detach().cpu().contiguous()

        return [tuple(fix(x) for x in t) if isinstance(t, tuple) else fix(t) for t in out]

    def _generate(self, name: str) -> dict[str, Tensor]:
        start, end = self._range(name)
        keys = ["null"] if name == NULL_SHARD else [f"p{i}" for i in range(start, end)]
        embs = self._encode([""] if name == NULL_SHARD else self.prompts[start:end])
        tensors: dict[str, Tensor] = {}
        for key, e in zip(keys, embs, strict=True):
            if isinstance(e, tuple):  # (tokens, pooled)
                tensors[key], tensors["q" + key] = e
            else:
                tensors[key] = e
        meta = {"sha256": tensors_sha256(tensors), "fingerprint": self.fingerprint,
                "prompt_file_sha256": self.prompt_sha256, "start": str(start), "end": str(end),
                "format": FORMAT}
        _atomic_save(tensors, self.dir / name, meta)
        self.regenerated.append(name)
        return mmap_safetensors(self.dir / name)  # the bytes just hashed, not a RAM copy

    def _shard(self, name: str) -> dict[str, Tensor]:
        with self._lock:  # a data-loading thread and the main thread may both read batches
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            tensors = self._check(name)
            if tensors is None:
                tensors = self._generate(name)
            self._keep(name, tensors)
            return tensors

    def _keep(self, name: str, tensors: dict[str, Tensor]) -> None:
        self._loaded[name] = tensors
        while self.max_shards_in_memory is not None and \
                len(self._loaded) > self.max_shards_in_memory:
            self._loaded.popitem(last=False)

    def verify(self) -> list[str]:
        """Check every shard (and the null shard); regenerate bad ones. Returns their names."""
        bad = []
        for name in [NULL_SHARD, *self.shard_names()]:
            self._loaded.pop(name, None)
            tensors = self._check(name)
            if tensors is None:
                tensors = self._generate(name)
                bad.append(name)
            self._keep(name, tensors)
        return bad

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.prompts)

    def embedding(self, i: int) -> Tensor:
        """``(L_i, D)`` embedding of prompt ``i``."""
        if not 0 <= i < len(self.prompts):
            raise IndexError(f"prompt index {i} out of range [0, {len(self.prompts)})")
        return self._shard(self.shard_names()[i // self.shard_size])[f"p{i}"]

    def pooled(self, i: int) -> Tensor | None:
        """``(P,)`` pooled embedding of prompt ``i`` (``None`` if the encoder has none)."""
        return self._shard(self.shard_names()[i // self.shard_size]).get(f"qp{i}")

    def get(self, indices: Sequence[int] | Tensor, device: torch.device | str | None = None,
            dtype: torch.dtype | None = None) -> PromptEmbeds:
        """A padded :class:`PromptEmbeds` batch for prompt ``indices``."""
        idx = indices.tolist() if torch.is_tensor(indices) else list(indices)
        pooled = [self.pooled(int(i)) for i in idx]
        present = [p for p in pooled if p is not None]  # one encoder: all or none have one
        return PromptEmbeds.from_list([self.embedding(int(i)) for i in idx],
                                      None if pooled[0] is None else present).to(device, dtype)

    @property
    def null_embeds(self) -> Tensor:
        """``(L0, D)`` embedding of the empty prompt."""
        if self._null is None:
            self._null = self._shard(NULL_SHARD)["null"]
        return self._null

    @property
    def null_pooled(self) -> Tensor | None:
        """``(P,)`` pooled embedding of the empty prompt, or ``None``."""
        return self._shard(NULL_SHARD).get("qnull")

    def null(self, batch: int = 1, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> PromptEmbeds:
        """The empty-prompt :class:`PromptEmbeds` repeated ``batch`` times."""
        p = self.null_pooled
        return PromptEmbeds.from_list([self.null_embeds] * batch,
                                      None if p is None else [p] * batch).to(device, dtype)


__all__ = ["EncodeFn", "PromptCache", "read_prompt_file", "tensors_sha256"]
