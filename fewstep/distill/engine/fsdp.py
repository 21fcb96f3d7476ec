"""FSDP (``train.distributed: fsdp``): each trainable network is sharded with
``torch.distributed.fsdp.fully_shard`` (FSDP2): each block of the outermost block lists, then
the network itself (:func:`fsdp_shard`). FSDP2 hooks ``forward`` of each sharded module, so any
call pattern of the student works as long as *every rank calls the same sharded modules in the
same order* (their all-gathers are collectives): the trainer therefore draws recipe decisions
such as DMD2's random step ``k`` from a generator shared by all ranks. Sharded gradients are
reduce-scattered (averaged) by FSDP itself. Checkpoints and student files hold full (gathered)
tensors (:class:`FullStateView`, :class:`FullOptimizerView`), so they are the same files as in
a one-process run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def _is_dtensor(t: object) -> TypeGuard[DTensor]:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def block_units(module: nn.Module) -> list[nn.Module]:
    """The FSDP units of ``module``: every element (with parameters) of each *outermost*
    ``nn.ModuleList`` -- transformer blocks, UNet down / mid / up blocks -- found by walking the
    module tree and not descending into a list once found. Lists nested inside a block (e.g. an
    attention's ``to_out``, a UNet block's ``resnets``) belong to their block's unit: sharding
    them separately inside an already-sharded block is what breaks ``fully_shard``."""
    units: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, nn.ModuleList):
                units.extend(b for b in child if any(True for _ in b.parameters()))
            else:
                visit(child)

    visit(module)
    return units


def fsdp_shard(module: nn.Module, forward_methods: Iterable[str] = ("features",),
               ignored: Iterable[nn.Parameter] = ()) -> nn.Module:
    """Shard ``module`` in place with FSDP2: each unit of :func:`block_units` (gathered one at a
    time), then ``module`` itself, whose unit holds everything else (embeddings, final layers).
    ``forward_methods`` that ``module`` defines are registered so that calling them (like
    ``Denoiser.features``) gathers the root's parameters as ``forward`` does. Frozen and
    trainable parameters may share a unit (only those with a gradient are reduce-scattered).
    ``ignored`` parameters stay as they are, replicated: a LoRA student's base, which *is* the
    teacher's weights, while its adapters are sharded."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    skip = set(ignored)
    ignored_params = skip or None
    for blk in block_units(module):
        if any(p not in skip for p in blk.parameters()):
            fully_shard(blk, ignored_params=ignored_params)
    fully_shard(module, ignored_params=ignored_params)
    for name in forward_methods:
        if callable(getattr(module, name, None)):
            register_fsdp_forward_method(module, name)
    return module


def full_tensor(t: Tensor) -> Tensor:
    """A DTensor's full value (collective: every rank must call); other tensors unchanged."""
    return t.full_tensor() if _is_dtensor(t) else t


class FullStateView:
    """``state_dict()`` / ``load_state_dict()`` of a (partly) FSDP-sharded module with full
    tensors, so checkpoints look like a one-process run's. Both are collectives."""

    def __init__(self, module: nn.Module, keys: Callable[[], Iterable[str]] | None = None
                 ) -> None:
        self.module = module
        self.keys = keys  # only these entries (e.g. a student's trainable state)

    def state_dict(self) -> dict[str, Tensor]:
        want = None if self.keys is None else set(self.keys())
        return {k: full_tensor(v) for k, v in self.module.state_dict().items()
                if want is None or k in want}

    def load_state_dict(self, sd: Mapping[str, Tensor], strict: bool = True) -> Any:
        from torch.distributed.tensor import distribute_tensor

        own = self.module.state_dict()
        out = {}
        for k, v in sd.items():
            cur = own.get(k)
            out[k] = (distribute_tensor(v.to(cur.device, cur.dtype), cur.device_mesh,
                                        cur.placements) if _is_dtensor(cur) else v)
        if self.keys is not None:
            want = set(self.keys())
            if set(out) != want:
                raise KeyError(f"state keys differ: missing {sorted(want - set(out))[:5]}, "
                               f"unexpected {sorted(set(out) - want)[:5]}")
            return self.module.load_state_dict(out, strict=False)
        return self.module.load_state_dict(out, strict=strict)


class Snapshot:
    """A state dict taken once (on every rank, as the collectives require) and handed to code
    that calls ``state_dict()`` (e.g. only rank 0's checkpoint writer)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


class FullOptimizerView:
    """The same for an optimizer whose parameters are partly DTensors: moments shaped like
    their parameter are gathered on save and re-sharded on load."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt

    def _params(self) -> list[Tensor]:
        return [p for g in self.opt.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        sd = self.opt.state_dict()
        sd["state"] = {pid: {k: full_tensor(v) if torch.is_tensor(v) else v
                             for k, v in st.items()} for pid, st in sd["state"].items()}
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        from torch.distributed.tensor import distribute_tensor

        params = self._params()
        state = {}
        for pid, st in sd["state"].items():
            p = params[int(pid)]
            state[pid] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                          if _is_dtensor(p) and torch.is_tensor(v) and v.shape == p.shape else v
                          for k, v in st.items()}
        self.opt.load_state_dict({**sd, "state": state})


__all__ = ["FullOptimizerView", "FullStateView", "Snapshot", "block_units", "fsdp_shard",
           "full_tensor"]
