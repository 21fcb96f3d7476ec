"""The prompt cache of a pipeline teacher, which cannot go stale.

What is cached: per prompt, the denoiser's conditioning leaves that ``__call__`` itself passes
(:func:`~fewstep.teachers.diffusers.capture.capture_cond`), and the null branch once: exactly
what the pipeline would feed its network, for any family.

The key (:func:`cache_key`) is a sha256 of everything that can change those leaves:

* every component but the denoiser, VAE and scheduler -- ``text_encoder*``, ``tokenizer*``,
  image encoders, processors -- by content (:func:`module_fingerprint`: class, config and every
  parameter and buffer's name, shape, dtype, float64 sum, abs-sum and 16 strided values;
  :func:`tokenizer_fingerprint`: the full serialisation, special tokens, chat template, max
  length, padding side); the denoiser, VAE and scheduler by class and config (pipelines read
  e.g. ``guidance_embeds`` from them);
* every ``__call__`` argument but prompt / latents / outputs / step count
  (``max_sequence_length``, ``system_prompt``, ``complex_human_instruction``,
  ``negative_prompt``, ``guidance_scale``, ``height`` ...), the signature's defaults filled in;
* the layout (leaf paths, batch axes, CFG arrangement, padding masks), the storage dtype, the
  diffusers / transformers versions.

Folder ``<cache.dir>/prompt_conditioning/<key[:16]>/``: ``manifest.json`` (the full key
material, readable) and shards ``shard_<k>.safetensors`` + ``null.safetensors`` (written by
:func:`~fewstep.utils.files.save_tensors`: the key and the non-tensor leaves in the config, a
checksum of the tensors). Another encoder, tokenizer, option or layout is another key, so
another folder: a stale cache is never found. A folder or shard that claims this key's place
but was built under another key is refused (:class:`~fewstep.errors.ConfigError`, one line
naming it); a missing or corrupted shard is captured again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from torch import Tensor, nn

from fewstep.errors import CheckpointError, ConfigError
from fewstep.teachers.diffusers.call_spec import CallSpec, bind_call
from fewstep.teachers.diffusers.capture import capture_cond, capture_null
from fewstep.teachers.diffusers.cond_batch import CondBatch
from fewstep.utils.files import (
    atomic_write_text,
    mmap_safetensors,
    read_metadata,
    save_tensors,
    tensors_digest,
)

log = logging.getLogger(__name__)

FORMAT = "fewstep-prompt-conditioning-v1"
SHARD_KIND = "prompt_conditioning"
#: ``__call__`` arguments that do not change the conditioning
NOT_KEYED = {"prompt", "prompt_2", "prompt_3", "prompt_4", "latents", "generator", "output_type",
             "return_dict", "callback_on_step_end", "callback_on_step_end_tensor_inputs",
             "callback", "callback_steps", "num_inference_steps", "sigmas", "timesteps"}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    if torch.is_tensor(v):
        t = v.detach().cpu().contiguous()
        return {"tensor": list(t.shape), "sha256": hashlib.sha256(
            t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()}
    return repr(v)


def module_fingerprint(m: nn.Module) -> str:
    """sha256 of a module's class, config and every parameter / buffer (see module docstring)."""
    h = hashlib.sha256(type(m).__name__.encode())
    cfg = getattr(m, "config", None)
    if cfg is not None:
        d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        d = {k: v for k, v in d.items() if k not in ("transformers_version", "_commit_hash",
                                                     "_diffusers_version", "_name_or_path")}
        h.update(json.dumps(_jsonable(d), sort_keys=True).encode())
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            flat = t.detach().reshape(-1)
            step = max(flat.numel() // 16, 1)
            stats = torch.stack([flat.double().sum(), flat.double().abs().sum()])
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(stats.cpu().numpy().tobytes())
            h.update(flat[::step][:16].double().cpu().numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tok: Any) -> str:
    """sha256 of a tokenizer's full serialisation and settings (see module docstring)."""
    h = hashlib.sha256(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    extra = {"special": getattr(tok, "special_tokens_map", None),
             "chat_template": getattr(tok, "chat_template", None),
             "model_max_length": getattr(tok, "model_max_length", None),
             "padding_side": getattr(tok, "padding_side", None),
             "truncation_side": getattr(tok, "truncation_side", None),
             "added": sorted(str(t) for t in getattr(tok, "added_tokens_decoder", {}).values())}
    h.update(json.dumps(_jsonable(extra), sort_keys=True).encode())
    return h.hexdigest()


def component_fingerprint(c: Any, config_only: bool) -> Any:
    """A component's identity: by content, or (``config_only``) its class and config."""
    if c is None:
        return None
    if isinstance(c, nn.Module):
        if config_only:
            return {"class": type(c).__name__, "config": _jsonable(dict(getattr(c, "config", {})))}
        return module_fingerprint(c)
    if hasattr(c, "get_vocab") or hasattr(c, "backend_tokenizer"):
        return tokenizer_fingerprint(c)
    if hasattr(c, "config"):  # schedulers
        return {"class": type(c).__name__, "config": _jsonable(dict(c.config))}
    if hasattr(c, "to_json_string"):  # processors
        return hashlib.sha256(c.to_json_string().encode()).hexdigest()
    return {"class": type(c).__name__, "repr": repr(c)[:200]}


def cache_key(pipe: Any, spec: CallSpec, call_kwargs: dict[str, Any],
              dtype: torch.dtype | None) -> tuple[str, dict[str, Any]]:
    """``(sha256 hex, readable key material)`` -- see module docstring."""
    call = {k: v for k, v in bind_call(pipe, call_kwargs).items() if k not in NOT_KEYED}
    structural = {spec.denoiser, "vae", "movq", "scheduler"}
    comps = {n: component_fingerprint(c, n in structural)
             for n, c in sorted(pipe.components.items())}
    like = spec.like()
    layout = {k: like[k] for k in ("latent", "cond", "forwards", "cfg", "cond_first", "axes")}
    layout["pad_masks"] = {k: [s, a, str(d)] for k, (s, a, d) in spec.pad_masks.items()}
    info = {"format": FORMAT, "pipeline": type(pipe).__name__,
            "versions": {"diffusers": diffusers.__version__,
                         "transformers": transformers.__version__},
            "call": _jsonable(call), "components": comps, "layout": layout, "dtype": str(dtype)}
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest(), info


def _tuples(v: Any) -> Any:
    """JSON lists back to the tuples pipelines use for shapes (``img_shapes``)."""
    if isinstance(v, list):
        inner = [_tuples(x) for x in v]
        return tuple(inner) if inner and all(isinstance(x, int) for x in inner) else inner
    return v


class ConditioningCache:
    """Conditioning of ``prompts`` (and the null branch), captured once, served by index.

    Args:
        root: ``cache.dir``; the cache lives in ``root/prompt_conditioning/<key[:16]>``.
        pipe / spec / call_kwargs: the pipeline, its inferred call and the ``__call__`` kwargs
            fewstep calls it with (height, width, the run's options).
        prompts: the prompt strings (``prompts_sha256``: of the prompt file, part of the
            manifest).
        dtype: storage dtype of floating-point leaves (``None``: as captured).
        cfg_call: the family entry's kwargs that switch CFG on (null branch).
        max_shards_in_memory: verified shards kept mapped (least recently used dropped; shards
            are memory-mapped, so only the pages a batch reads are in memory).

    Every shard is verified (and missing ones captured) when the cache is opened, so the text
    encoders are not needed afterwards. ``captured``: shard names written in this session.
    """

    def __init__(self, root: str | Path, pipe: Any, spec: CallSpec, call_kwargs: dict[str, Any],
                 prompts: list[str], prompts_sha256: str = "", shard_size: int = 64,
                 dtype: torch.dtype | None = None, cfg_call: dict[str, Any] | None = None,
                 max_shards_in_memory: int = 8) -> None:
        self.pipe, self.spec, self.kw = pipe, spec, dict(call_kwargs)
        self.prompts, self.shard_size, self.dtype = list(prompts), shard_size, dtype
        self.cfg_call = cfg_call
        self.key, info = cache_key(pipe, spec, call_kwargs, dtype)
        self.dir = Path(root).expanduser() / "prompt_conditioning" / self.key[:16]
        info.update(prompts_sha256=prompts_sha256, num_prompts=len(self.prompts),
                    shard_size=shard_size, key=self.key)
        self._manifest(info)
        self.captured: list[str] = []
        self.max_shards_in_memory = max(1, max_shards_in_memory)
        self._mem: OrderedDict[str, list[CondBatch]] = OrderedDict()
        self._lock = threading.Lock()  # a data-loading thread may read batches too
        self._null = self._load_null()
        for k in range(self.num_shards):
            self._shard(k)

    @property
    def num_shards(self) -> int:
        return (len(self.prompts) + self.shard_size - 1) // self.shard_size

    def _manifest(self, info: dict[str, Any]) -> None:
        path = self.dir / "manifest.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8")).get("key")
            except (OSError, json.JSONDecodeError, AttributeError):
                old = None
            if old is not None and old != self.key:
                raise ConfigError(f"cache.dir: the prompt cache {self.dir} was built by other "
                                  "text encoders or options; remove it or use another cache.dir")
            if old == self.key and json.loads(path.read_text(encoding="utf-8")) == info:
                return
        atomic_write_text(path, json.dumps(info, indent=1, sort_keys=True))

    # -- storage ------------------------------------------------------------------------------
    @staticmethod
    def _prompts_sha(prompts: list[str]) -> str:
        return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()

    def _write(self, name: str, items: list[CondBatch], prompts: list[str]) -> None:
        tensors: dict[str, Tensor] = {}
        objs: dict[str, Any] = {}
        for i, cb in enumerate(items):
            for p, v in cb.leaves.items():
                if torch.is_tensor(v):
                    tensors[f"{i}|{p}"] = (v.to(self.dtype) if self.dtype is not None
                                           and v.is_floating_point() else v)
                elif isinstance(v, list) and v and all(torch.is_tensor(t) for t in v):
                    for j, t in enumerate(v):
                        tensors[f"{i}|{p}|row{j}"] = t
                    objs[f"{i}|{p}"] = {"rows": len(v)}
                else:
                    objs[f"{i}|{p}"] = {"value": _jsonable(v)}
        save_tensors(self.dir / name, tensors, SHARD_KIND,
                     {"key": self.key, "n": len(items), "objs": objs,
                      "prompts": self._prompts_sha(prompts)})
        self.captured.append(name)

    def _read(self, name: str, prompts: list[str]) -> list[CondBatch] | None:
        """The rows of shard ``name`` for ``prompts``; ``None`` if missing, corrupted or of
        other prompts (the prompt file changed); refused if built under another key."""
        path = self.dir / name
        if not path.exists():
            return None
        try:  # memory-mapped views, verified against the stored checksum
            meta = read_metadata(path)
            tensors = mmap_safetensors(path)
            cfg = json.loads(meta.get("config", "{}"))
            ok = meta.get("fewstep_kind") == SHARD_KIND and \
                meta.get("sha256") == tensors_digest(tensors)
        except (CheckpointError, ValueError, KeyError, OSError):
            ok = False
        if not ok:
            log.warning("prompt cache shard %s is corrupted; capturing it again", path)
            return None
        if cfg.get("key") != self.key:
            raise ConfigError(f"cache.dir: the prompt cache shard {path} was built by other text "
                              "encoders or options; remove it or use another cache.dir")
        if cfg.get("prompts") != self._prompts_sha(prompts):
            return None
        out = []
        for i in range(int(cfg["n"])):
            leaves: dict[str, Any] = {}
            for p in self.spec.cond:
                o = cfg["objs"].get(f"{i}|{p}")
                if o is None:
                    leaves[p] = tensors[f"{i}|{p}"]
                elif "rows" in o:
                    leaves[p] = [tensors[f"{i}|{p}|row{j}"] for j in range(o["rows"])]
                else:
                    leaves[p] = _tuples(o["value"])
            out.append(CondBatch(leaves, self.spec.pad_masks))
        return out

    # -- capture ------------------------------------------------------------------------------
    def _shard(self, k: int) -> list[CondBatch]:
        with self._lock:
            return self._shard_locked(k)

    def _shard_locked(self, k: int) -> list[CondBatch]:
        name = f"shard_{k:05d}.safetensors"
        if name not in self._mem:
            want = self.prompts[k * self.shard_size:(k + 1) * self.shard_size]
            items = self._read(name, want)
            if items is None:
                if k == 0 or k % 10 == 0:
                    log.info("capturing prompt conditioning, shard %d / %d", k + 1,
                             self.num_shards)
                self._write(name, [capture_cond(self.pipe, self.spec.like(), self.kw, [p])[0]
                                   for p in want], want)
                items = self._read(name, want)  # the stored bytes (dtype), memory-mapped
                assert items is not None
            self._mem[name] = items
            while len(self._mem) > self.max_shards_in_memory:
                self._mem.popitem(last=False)
        self._mem.move_to_end(name)
        return self._mem[name]

    def _load_null(self) -> CondBatch | None:
        items = self._read("null.safetensors", [""])
        if items is None:
            like = self.spec.like()
            null = capture_cond(self.pipe, like, self.kw, [""])[1]
            if null is None:
                null = capture_null(self.pipe, like, self.kw, self.cfg_call, "")
            self._write("null.safetensors", [] if null is None else [null], [""])
            items = self._read("null.safetensors", [""])
            assert items is not None
        return items[0] if items else None

    # -- access -------------------------------------------------------------------------------
    def null(self) -> CondBatch | None:
        """The null branch (one row), ``None`` if the pipeline has none."""
        return self._null

    def get(self, indices: Any, device: torch.device | str | None = None,
            dtype: torch.dtype | None = None) -> CondBatch:
        """The conditioning of prompts ``indices`` as one :class:`CondBatch`."""
        idx = indices.tolist() if torch.is_tensor(indices) else list(indices)
        rows = [self._shard(int(i) // self.shard_size)[int(i) % self.shard_size] for i in idx]
        out = CondBatch.cat(rows)
        return out if device is None and dtype is None else out.to(device, dtype)

    def __len__(self) -> int:
        return len(self.prompts)


__all__ = ["ConditioningCache", "cache_key", "component_fingerprint", "module_fingerprint",
           "tokenizer_fingerprint"]
