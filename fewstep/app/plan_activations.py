"""Activation memory for ``fewstep plan``, measured on the meta device: one forward of the
teacher-shaped network at the run's sample shape, with a hook on what autograd saves for
backward (``torch.autograd.graph.saved_tensors_hooks``). Nothing is computed or allocated
(meta tensors), so the real full-size network is measured in seconds.

* Attention is counted as a memory-efficient kernel keeps it on a GPU (flash / efficient SDPA:
  q, k, v, the output and a float32 log-sum-exp per query), not as the CPU math path would
  (the full attention matrix): ``F.scaled_dot_product_attention`` is swapped for an autograd
  function that saves exactly those during the measurement.
* Tensors saved twice (views of one storage) count once; the network's own parameters and
  buffers (saved by the linear layers) do not count.
* Gradient checkpointing: the checkpointed units are the elements of the ``ModuleList`` s named
  in :data:`CHECKPOINTED` (what diffusers' ``gradient_checkpointing`` recomputes: transformer
  blocks, Z-Image layers / refiners, UNet resnets and attention blocks). With checkpointing a
  forward keeps what is saved outside the units, each unit's tensor inputs, and -- during the
  recomputation in backward -- the largest unit's saved tensors.

The weights are cast to the dtype training computes in (bf16 under mixed precision) first. The
per-sample figure times the per-GPU batch and the graph forwards of a loss is the estimate.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

#: ModuleList names whose elements gradient checkpointing recomputes as one unit
CHECKPOINTED = ("transformer_blocks", "single_transformer_blocks", "layers", "noise_refiner",
                "context_refiner", "resnets", "blocks")
#: config keys of the text-embedding width a network takes, in order of precedence (PixArt's
#: ``cross_attention_dim`` is its inner width; its input is ``caption_channels``)
_TEXT_WIDTH = ("joint_attention_dim", "caption_channels", "cap_feat_dim", "cross_attention_dim")


@dataclass
class SavedBytes:
    """Bytes autograd keeps per sample for one forward: ``full`` (no checkpointing) and
    ``checkpointed`` (block-level checkpointing, see module docstring); ``units``: how many
    checkpointed units the network has."""

    full: float
    checkpointed: float
    units: int


class _EfficientAttention(torch.autograd.Function):
    """SDPA that saves what a memory-efficient GPU kernel saves (measurement only)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, kwargs: dict[str, Any]) -> Tensor:
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # pragma: no cover - never run
        raise RuntimeError("activation measurement only")


class _AttentionAsGPU(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention and len(args) <= 3:
            qkv = list(args) + [kwargs.pop(n) for n in ("query", "key", "value")[len(args):]]
            return _EfficientAttention.apply(*qkv, kwargs)
        return func(*args, **kwargs)


def _units(net: nn.Module) -> list[nn.Module]:
    """The outermost elements of the :data:`CHECKPOINTED` module lists."""
    found: list[nn.Module] = []
    inside: set[int] = set()
    for name, mod in net.named_modules():
        if isinstance(mod, nn.ModuleList) and name.rsplit(".", 1)[-1] in CHECKPOINTED:
            for unit in mod:
                if id(unit) not in inside:
                    found.append(unit)
                    inside.update(id(m) for m in unit.modules())
    return found


def _key(t: Tensor) -> int:
    return t.untyped_storage()._cdata


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def measure_saved(den: nn.Module, x: Tensor, sigma: Tensor, cond: Any,
                  dtype: torch.dtype) -> SavedBytes:
    """:class:`SavedBytes` per sample of ``den(x, sigma, cond)`` (meta inputs, batch 1) with a
    copy of ``den`` cast to ``dtype`` (its frozen parameters excluded)."""
    den = copy.deepcopy(den).to(dtype)
    own = {_key(t) for t in (*den.parameters(), *den.buffers())}
    units = _units(den)
    saved: dict[int, int] = {}
    where: dict[int, int] = {}  # storage -> unit index (-1: outside every unit)
    inputs: dict[int, int] = {}
    stack: list[int] = []

    def pack(t: Tensor) -> Tensor:
        k = _key(t)
        if k not in own and k not in saved:
            saved[k] = _nbytes(t)
            where[k] = stack[0] if stack else -1
        return t

    def pre(i: int) -> Any:
        def hook(_m: nn.Module, args: Any, kwargs: Any) -> None:
            if not stack:
                for a in (*args, *kwargs.values()):
                    if isinstance(a, Tensor) and _key(a) not in own:
                        inputs.setdefault(_key(a), _nbytes(a))
            stack.append(i)
        return hook

    def post(_m: nn.Module, _a: Any, _o: Any) -> None:
        stack.pop()

    handles = [h for i, u in enumerate(units)
               for h in (u.register_forward_pre_hook(pre(i), with_kwargs=True),
                         u.register_forward_hook(post))]
    try:
        x = x.to(dtype).requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _AttentionAsGPU():
            den(x, sigma, cond)
    finally:
        for h in handles:
            h.remove()
    per_unit = [0] * len(units)
    outside = 0
    for k, n in saved.items():
        if where[k] < 0:
            outside += n
        else:
            per_unit[where[k]] += n
    n = int(x.shape[0])
    full = sum(saved.values()) / n
    ckpt = (outside + sum(inputs.values()) + max(per_unit, default=0)) / n
    return SavedBytes(float(full), float(min(ckpt, full)), len(units))


def example_cond(den: nn.Module, max_tokens: int, num_classes: int, dtype: torch.dtype
                 ) -> Any:
    """A batch-1 meta conditioning of the right widths: prompt embeddings
    ``(1, max_tokens, text width)`` (+ a pooled vector where the network takes one) for a
    diffusers network, class labels for a class-conditional one, else ``None``."""
    net = getattr(den, "transformer", None) or getattr(den, "net", None)
    cfg = getattr(net, "config", None)
    if cfg is None:
        return torch.zeros(1, dtype=torch.long, device="meta") if num_classes else None
    from fewstep.core.conditioning import PromptEmbeds

    width = next((int(cfg[k]) for k in _TEXT_WIDTH if cfg.get(k)), None)
    if width is None:
        raise ValueError(f"{type(net).__name__}: no text width in its config")
    pooled = cfg.get("pooled_projection_dim")
    if cfg.get("addition_embed_type") == "text_time":  # SDXL: pooled + 6 time ids
        pooled = int(cfg["projection_class_embeddings_input_dim"]) - \
            6 * int(cfg["addition_time_embed_dim"])
    return PromptEmbeds(torch.zeros(1, max_tokens, width, device="meta", dtype=dtype),
                        torch.ones(1, max_tokens, dtype=torch.bool, device="meta"),
                        None if not pooled else torch.zeros(1, int(pooled), device="meta",
                                                            dtype=dtype),
                        lengths=(max_tokens,))


def measured_activations(den: nn.Module, shape: tuple[int, ...], max_tokens: int,
                         dtype: torch.dtype) -> SavedBytes | None:
    """:class:`SavedBytes` per sample of a diffusers-pipeline teacher (a ``.net`` with a
    diffusers ``config``) at the sample ``shape`` (no batch axis); ``None`` for other networks
    (their estimate stays :func:`fewstep.app.plan.activation_shape`'s), and ``None`` when the
    network's forward does not run with a plain prompt embedding (e.g. SDXL's
    ``added_cond_kwargs``, which fewstep's diffusers adapter does not supply yet)."""
    net = getattr(den, "net", None)
    if getattr(net, "config", None) is None or getattr(den, "transformer", None) is not None:
        return None
    x = torch.zeros((1, *shape), device="meta")
    sigma = torch.full((1,), 0.5, device="meta")
    try:
        return measure_saved(den, x, sigma, example_cond(den, max_tokens, 0, dtype), dtype)
    except (TypeError, ValueError, RuntimeError):
        return None


def generic_activation_shape(den: nn.Module, shape: tuple[int, ...], text_tokens: int
                             ) -> dict[str, Any]:
    """``{"tokens", "hidden", "blocks", "basis"}`` of a network without its own formula.

    A diffusers transformer (a ``config`` with ``patch_size`` and ``num_attention_heads``):
    ``(H/p)(W/p)`` image tokens + ``text_tokens``, where ``p`` is the patch size, or the 2-D
    packing factor ``sqrt(in_channels / C)`` when the pipeline packs latents (Flux, Qwen-Image);
    width ``num_attention_heads x attention_head_dim``; the blocks of its top-level block lists.
    Anything else (coarse): spatial positions of the sample, the widest layer, and a quarter of
    the Linear / Conv layers as "blocks".
    """
    net = den
    for attr in ("network", "net"):  # a pipeline / fewstep wrapper's network
        inner = getattr(den, attr, None)
        if isinstance(inner, nn.Module):
            net = inner
            break
    c = getattr(net, "config", None)
    if c is not None and "patch_size" in c and "num_attention_heads" in c:
        p = c.get("patch_size") or 1
        p = int(p[0] if isinstance(p, list | tuple) else p)
        packed = int(c.get("in_channels") or shape[0]) // int(shape[0])
        if packed > 1:
            p = max(p, round(math.sqrt(packed)))
        img = (shape[-2] // p) * (shape[-1] // p)
        hidden = int(c["num_attention_heads"]) * int(c.get("attention_head_dim") or 1)
        blocks = sum([len(m) for m in net.children() if isinstance(m, nn.ModuleList)])
        return {"tokens": img + text_tokens, "hidden": hidden, "blocks": max(1, blocks),
                "basis": f"transformer formula: {img} image + {text_tokens} text tokens"}
    widths, layers = [], 0
    for m in net.modules():
        if isinstance(m, nn.Linear):
            widths.append(m.out_features)
            layers += 1
        elif isinstance(m, nn.Conv2d):
            widths.append(m.out_channels)
            layers += 1
    return {"tokens": math.prod(shape[1:]) if len(shape) > 1 else 1,
            "hidden": max(widths, default=1), "blocks": max(1, layers // 4),
            "basis": "coarse: spatial positions x widest layer"}


__all__ = ["CHECKPOINTED", "SavedBytes", "example_cond", "generic_activation_shape",
           "measure_saved", "measured_activations"]
