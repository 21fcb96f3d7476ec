"""Multi-process data-parallel training for the distillation :class:`~fewstep.distill.trainer.
Trainer`: process group, per-rank batches, DDP over each loss and FSDP sharding.

Launch with ``torchrun --nproc_per_node N`` or ``accelerate launch --multi_gpu --num_processes
N`` (both set ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``);
the trainer then joins the group (``env://``; gloo on CPU, nccl on CUDA with ``cuda:LOCAL_RANK``)
unless ``torch.distributed`` is already initialised, in which case it uses that group.

DDP (``train.distributed: ddp``, the default): a recipe calls the student several times per
loss (step 1, then step 2 end-to-end, or a random number of no-grad steps first) through
``Student.generate`` -- a method, not ``forward`` -- and calls aux modules from inside the
student's loss, while ``DistributedDataParallel`` expects one ``forward`` of the wrapped module
per backward. :class:`DDPLoss` therefore wraps the *loss function*: a small module registering
the trainable networks, whose ``forward`` runs the whole loss. Autograd sums all uses of a
parameter into one accumulation, so DDP's reducer sees each parameter once per backward and
all-reduces its bucket as soon as it is ready, overlapping communication with the rest of the
backward pass. Rank 0's weights are broadcast first (:meth:`DistEnv.broadcast_modules`), so
with identical gradients and optimizers every rank holds bit-identical weights, optimizer
moments and EMA. :meth:`DistEnv.average_gradients` (bucketed all-reduce after backward) remains
for parameters outside DDP (FSDP's unsharded heads).

FSDP (``train.distributed: fsdp``): :mod:`fewstep.distill.engine.fsdp`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fewstep.distill.engine.precision import stack_scalars
from fewstep.errors import ConfigError

Mode = Literal["none", "ddp", "fsdp"]
#: gradients are all-reduced in flat buckets of at most this many elements
BUCKET_NUMEL = 1 << 24


def world_from_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` as set by torchrun / accelerate launch (or 0, 1, 0)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return rank, world, int(os.environ.get("LOCAL_RANK", rank))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world, int(os.environ.get("LOCAL_RANK", str(rank)))


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


@dataclass
class DistEnv:
    """This process's place in the group; every method is a no-op with one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: Mode = "none"
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        return self.mode == "fsdp"

    # -- data ---------------------------------------------------------------------------------
    def shard_slice(self, global_batch: int) -> slice:
        """This rank's rows of a global batch (contiguous, equal shares)."""
        n = global_batch // self.world_size
        return slice(self.rank * n, (self.rank + 1) * n)

    def shard(self, value: Any, global_batch: int) -> Any:
        """Slice a batch field (tensor, :class:`PromptEmbeds`, list, dataclass of them) to this
        rank's rows; ``None`` and fields without ``global_batch`` rows pass through."""
        if not self.enabled or value is None:
            return value
        if is_dataclass(value) and not isinstance(value, type) and not hasattr(value,
                                                                              "__getitem__"):
            return replace(value, **{f.name: self.shard(getattr(value, f.name), global_batch)
                                     for f in fields(value) if f.init})
        try:
            n = len(value)
        except TypeError:
            return value
        return value[self.shard_slice(global_batch)] if n == global_batch else value

    # -- collectives --------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds a cache on disk), then the others."""
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:
            if self.is_main:
                self.barrier()

    def _device(self, device: torch.device) -> torch.device:
        # nccl moves CUDA tensors only; gloo CPU ones
        return device if dist.get_backend() == "nccl" else torch.device("cpu")

    def all_flags(self, flag: bool, device: torch.device) -> tuple[bool, bool]:
        """``(all ranks True, any rank True)`` for a per-rank flag."""
        if not self.enabled:
            return flag, flag
        t = torch.tensor([float(flag)], device=self._device(device))
        dist.all_reduce(t)
        n = int(t.item())
        return n == self.world_size, n > 0

    @torch.no_grad()
    def broadcast_modules(self, *modules: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (before sharding)."""
        if not self.enabled:
            return
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                if _is_dtensor(t):
                    continue
                buf = t.detach().to(self._device(t.device))
                dist.broadcast(buf, 0)
                if buf.data_ptr() != t.data_ptr():
                    t.copy_(buf)

    @torch.no_grad()
    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace each gradient by its mean over ranks (what DDP computes).

        A parameter that has no gradient on some ranks (e.g. a step module one rank did not
        use) counts as a zero gradient there; one with no gradient on any rank keeps ``None``.
        FSDP-sharded parameters (DTensors) are skipped: FSDP reduces them itself.
        """
        if not self.enabled:
            return
        plist = [p for p in params if not _is_dtensor(p)]
        if not plist:
            return
        dev = self._device(plist[0].device)
        has = torch.tensor([float(p.grad is not None) for p in plist], device=dev)
        dist.all_reduce(has)
        live = [p for p, h in zip(plist, has.tolist(), strict=True) if h > 0]
        # bucket the gradients by dtype and size; one all-reduce per bucket
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for p in live:
            grad = p.grad
            if grad is None:
                grad = p.grad = torch.zeros_like(p)
            by_dtype.setdefault(grad.dtype, []).append(grad)
        for group in by_dtype.values():
            bucket: list[Tensor] = []
            size = 0
            for g in group:
                bucket.append(g)
                size += g.numel()
                if size >= BUCKET_NUMEL:
                    self._reduce_bucket(bucket, dev)
                    bucket, size = [], 0
            if bucket:
                self._reduce_bucket(bucket, dev)

    def _reduce_bucket(self, grads: list[Tensor], dev: torch.device) -> None:
        flat = torch.cat([g.reshape(-1) for g in grads]).to(dev)
        dist.all_reduce(flat)
        flat /= self.world_size
        off = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[off:off + n].view_as(g))
            off += n

    @torch.no_grad()
    def mean_logs(self, logs: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        """Average scalar log terms over ranks (same keys on every rank); a NaN on any rank
        makes the average NaN on all, so divergence is detected everywhere at once."""
        if not self.enabled or not logs:
            return dict(logs)
        keys = sorted(logs)
        t = stack_scalars([logs[k] for k in keys]).to(self._device(device))
        dist.all_reduce(t)
        t /= self.world_size
        return {k: t[i] for i, k in enumerate(keys)}

    def gather_generator_states(self, gen: torch.Generator) -> list[Tensor]:
        """Every rank's state of its own ``gen`` (for rank 0's checkpoint)."""
        s = gen.get_state()
        if not self.enabled:
            return [s]
        out = [torch.empty_like(s) for _ in range(self.world_size)]
        if dist.get_backend() == "nccl":
            dev = torch.device("cuda", torch.cuda.current_device())
            tmp = [o.to(dev) for o in out]
            dist.all_gather(tmp, s.to(dev))
            return [t.cpu() for t in tmp]
        dist.all_gather(out, s)
        return out

    def shutdown(self) -> None:
        """Destroy the process group if this object created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


class _LossModule(nn.Module):
    """Registers the modules whose parameters a loss trains and runs the loss as ``forward``,
    so that ``DistributedDataParallel`` sees one forward per backward however often the loss
    calls those modules inside (``Student.generate`` runs each step network in turn)."""

    def __init__(self, modules: Mapping[str, nn.Module], fn: Callable[..., Any]) -> None:
        super().__init__()
        self.mods = nn.ModuleDict(dict(modules))
        self.fn = fn  # a plain attribute: the recipe's modules are not registered twice

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class DDPLoss:
    """A loss function ``fn(*args) -> (loss, logs)`` run through torch's
    ``DistributedDataParallel`` over the trainable parameters of ``modules`` (only those in
    ``params`` when given).

    DDP's reducer hooks every trainable parameter's gradient accumulation and all-reduces
    (averages) gradients in buckets *while backward still runs*, overlapping communication with
    the rest of the backward pass. It requires one wrapper ``forward`` per backward, which is
    why the whole loss -- not the student -- is the wrapped forward: a recipe may call the
    student several times (steps 1..K, no-grad unrolls, aux modules), and autograd sums all uses
    of a parameter into one accumulation, so the hook fires once per parameter and backward.
    ``find_unused_parameters=True`` (default) lets a loss skip modules (DMD2's random step
    ``k``; parameters used only under ``no_grad``): DDP then treats their gradient as zero on
    that rank and leaves it ``None`` if no rank used it -- what :meth:`DistEnv.average_gradients`
    does. Parameters must keep ``requires_grad`` between construction and every call (frozen
    ones are ignored); toggling a *whole* wrapped set off while another loss runs is fine as
    long as that loss does not backpropagate into it.

    With one process, or ``fsdp`` (FSDP reduces its sharded parameters itself), ``fn`` is called
    directly and :meth:`DistEnv.average_gradients` remains the fallback for unsharded leftovers.
    Rank 0's parameters and buffers are broadcast when the wrapper is built.
    """

    def __init__(self, env: DistEnv, fn: Callable[..., Any], modules: Mapping[str, nn.Module],
                 device: torch.device, params: Iterable[nn.Parameter] | None = None,
                 find_unused_parameters: bool = True, bucket_cap_mb: float = 25.0) -> None:
        self.env, self.fn = env, fn
        self.ddp: nn.Module | None = None
        keep = None if params is None else {id(p) for p in params}
        if env.enabled and not env.fsdp and any(
                p.requires_grad and (keep is None or id(p) in keep)
                for m in modules.values() for p in m.parameters()):
            from torch.nn.parallel import DistributedDataParallel as DDP

            wrapped = _LossModule(modules, fn)
            # frozen weights (a LoRA base, a teacher a recipe holds), parameters another loss
            # trains (``params`` not given for them) and buffers are neither reduced nor
            # re-broadcast
            frozen = [n for n, p in wrapped.named_parameters() if not p.requires_grad
                      or (keep is not None and id(p) not in keep)]
            DDP._set_params_and_buffers_to_ignore_for_model(
                wrapped, frozen + [n for n, _ in wrapped.named_buffers()])
            self.ddp = DDP(wrapped,
                           device_ids=[device] if device.type == "cuda" else None,
                           find_unused_parameters=find_unused_parameters,
                           bucket_cap_mb=bucket_cap_mb)

    @property
    def synced(self) -> bool:
        """``True`` if DDP averages the gradients (no :meth:`DistEnv.average_gradients`)."""
        return self.ddp is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return (self.ddp or self.fn)(*args, **kwargs)


def init_distributed(device: torch.device, mode: str | None, global_batch: int | None = None
                     ) -> tuple[DistEnv, torch.device]:
    """Join (or reuse) the process group described by the environment.

    ``device`` is ``train.device`` (:class:`ConfigError` if this machine does not have it);
    ``mode`` is ``train.distributed`` (``ddp`` | ``fsdp``; ``None``: ddp); with one process it
    is ``none``; ``global_batch`` (``train.batch_size``) must split evenly over the processes.
    Returns the environment and the device this rank trains on (``cuda`` becomes
    ``cuda:LOCAL_RANK``). Raises :class:`ConfigError` for unsupported combinations.
    """
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {str(device)!r} is not available on this machine "
                          "(no CUDA); use cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: 'mps' is not available on this machine; use cpu")
    rank, world, local = world_from_env()
    if global_batch is not None and global_batch % max(world, 1):
        raise ConfigError(f"train.batch_size: {global_batch} (the global batch) is not "
                          f"divisible by the {world} processes")
    if world <= 1:
        return DistEnv(), device
    if device.type == "mps":
        raise ConfigError("train.device: multi-process training runs on cpu or cuda, not mps")
    if device.type == "cuda":
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method="env://", rank=rank, world_size=world)
        owns = True
    return DistEnv(rank, world, local, "fsdp" if mode == "fsdp" else "ddp", owns), device


__all__ = ["DDPLoss", "DistEnv", "init_distributed", "world_from_env"]
