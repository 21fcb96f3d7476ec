"""The teacher registry: one :class:`TeacherAdapter` per ``teacher.kind``.

An adapter knows, for its kind, how to

* ``check(spec)`` -- validate the ``teacher`` section (``ValueError`` naming the field);
* ``check_data(spec, data)`` -- whether the run's ``data`` fits the teacher;
* ``load(spec, data=, cache_dir=, device=)`` -- build a :class:`LoadedTeacher`: the frozen
  denoiser, the problem (sample shape, conditioning), the teacher config (sampling settings,
  ``builder`` that rebuilds the architecture on reload), an identity, the pipeline and latent
  codec if any;
* ``meta(spec, data=)`` -- the teacher network on the ``meta`` device from configs only
  (``plan``).

An adapter sees its own section (:class:`~fewstep.teachers.spec.TeacherSpec`), the run's
``data`` value and the cache folder, never the whole run config: teachers sit below the
distillation layer.

Every place that used to switch on ``teacher.kind`` asks :func:`get_adapter` instead.
Register a new kind with ``@TEACHER_KINDS.register(name)`` on a subclass
(:mod:`fewstep.utils.registry`); its ``kind`` attribute is set to the name.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from fewstep.core.denoiser import Denoiser
from fewstep.core.samplers import Trajectory, euler_sample
from fewstep.utils.fingerprints import folder_fingerprint, module_fingerprint
from fewstep.utils.registry import Registry

if TYPE_CHECKING:  # annotations only (spec.py imports this module)
    from fewstep.teachers.spec import TeacherSpec

#: the run's ``data`` value: a built-in name, ``"prompts"``, or a user data set (canonical form)
DataRef = str | dict[str, Any]


@dataclass
class LoadedTeacher:
    """A frozen teacher and what the trainer needs around it.

    Attributes:
        denoiser: ``D(x_sigma, sigma, cond) -> x0_hat`` (eval, ``requires_grad=False``).
        config: JSON-able; ``kind``, ``builder`` (``[target, kwargs]`` rebuilding the network,
            for non-file teachers), ``sampling`` (``steps``, ``shift``, ``cfg_scale`` = our
            guidance ``w``, ``sigmas`` = the N + 1 teacher levels, ``noise_scale``), with the
            ``teacher`` section's overrides applied.
        identity: a string that changes with the weights (teacher-cache key, resume check).
        problem: sample shape, conditioning sampler and map (``Problem`` / ``PromptProblem``).
        pipeline: the diffusers pipeline (VAE, text encoder) or ``None``.
        codec: a :class:`~fewstep.teachers.diffusers.codec.LatentCodec` or ``None`` (pixels).
        sampler: the teacher's own N-step sampler ``(first input, cond, w) -> Trajectory``
            (a diffusers pipeline's scheduler, see
            :func:`~fewstep.teachers.diffusers.scheduler_sampler.scheduler_sample`); ``None``:
            fewstep's Euler sampler at :attr:`sigmas`.
    """

    denoiser: Denoiser
    config: dict[str, Any]
    identity: str
    problem: Any
    pipeline: Any = None
    codec: Any = None
    sampler: Callable[[Tensor, Any, float], Trajectory] | None = None

    def sample(self, noise: Tensor, cond: Any, w: float | None = None) -> Trajectory:
        """The teacher's N-step samples from standard ``noise`` (guidance ``w``, default
        :attr:`cfg_scale`): its own sampler, or Euler at :attr:`sigmas`."""
        w = self.cfg_scale if w is None else w
        if self.sampler is not None:
            return self.sampler(self.start(noise), cond, w)
        return euler_sample(self.denoiser, self.start(noise), cond, self.sigmas, w)

    @property
    def sigmas(self) -> Tensor:
        """The teacher sampler's ``N + 1`` levels (last 0)."""
        return torch.tensor(self.config["sampling"]["sigmas"], dtype=torch.float32)

    @property
    def shift(self) -> float:
        """The time shift of the teacher's levels (1: none)."""
        return float(self.config["sampling"].get("shift", 1.0))

    @property
    def cfg_scale(self) -> float:
        """The teacher's guidance ``w`` (``d_u + w (d_c - d_u)``; 1: no guidance)."""
        return float(self.config["sampling"].get("cfg_scale", 1.0))

    @property
    def noise_scale(self) -> float:
        """Scale of the sampler's first input (1, or ``1 / (a_0 + s_0)`` for a VP schedule whose
        first level is below sigma = 1)."""
        return float(self.config["sampling"].get("noise_scale", 1.0))

    def start(self, noise: Tensor) -> Tensor:
        """The sampler's first input from standard noise: ``noise * sampling.noise_scale`` (1
        unless the schedule starts below sigma = 1, e.g. a VP pipeline's own levels)."""
        return noise * float(self.config["sampling"].get("noise_scale", 1.0))


@dataclass
class MetaTeacher:
    """The teacher network on the ``meta`` device (no weights) for ``fewstep plan``."""

    module: nn.Module
    data_shape: tuple[int, ...]
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)


class TeacherAdapter(ABC):
    """One ``teacher.kind`` (see module docstring)."""

    kind: ClassVar[str]
    #: spec fields this kind reads (others must stay at their defaults)
    fields: ClassVar[tuple[str, ...]] = ()

    def check(self, spec: TeacherSpec) -> None:
        """Validate the section; ``ValueError("teacher.<field>: reason")``."""
        for name in ("path", "pretrained", "prompts", "resolution", "builder", "call_kwargs"):
            if name not in self.fields and getattr(spec, name) not in (None, {}):
                raise ValueError(f"teacher.{name}: not used with teacher.kind {self.kind}")

    def check_data(self, spec: TeacherSpec, data: DataRef) -> None:
        """``ValueError`` if ``data`` cannot be this teacher's problem (default: any)."""
        return None

    @abstractmethod
    def load(self, spec: TeacherSpec, *, data: DataRef, cache_dir: str, device: torch.device
             ) -> LoadedTeacher:
        """Load and freeze the teacher (``cache_dir``: where derived caches, e.g. prompt
        embeddings, live)."""

    @abstractmethod
    def meta(self, spec: TeacherSpec, *, data: DataRef) -> MetaTeacher:
        """The network on ``meta`` from configs only."""


def _on_register(name: str, cls: type[TeacherAdapter]) -> None:
    cls.kind = name


#: ``teacher.kind`` -> adapter class
TEACHER_KINDS: Registry[type[TeacherAdapter]] = Registry("teacher kind", "teacher.kind",
                                                         _on_register)


def get_adapter(kind: str) -> TeacherAdapter:
    """The adapter of ``kind``; :class:`ConfigError` naming ``teacher.kind`` if unknown."""
    return TEACHER_KINDS.get(kind)()


def teacher_kinds() -> list[str]:
    return TEACHER_KINDS.names()


# ---------------------------------------------------------------------------- shared helpers
def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (float32 | bfloat16 | float16)."""
    return {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def dtype_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` keyword for the dtype (newer diffusers renamed ``torch_dtype``)."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def weights_probe(module: nn.Module, h: Any, n: int = 4) -> None:
    """Feed names and the first 1024 values of the first / last ``n`` parameters into ``h``
    (the identity of older fewstep versions: kept to recognise their checkpoints)."""
    named = list(module.named_parameters())
    for name, p in named[:n] + named[-n:]:
        h.update(name.encode())
        h.update(p.detach().flatten()[:1024].to("cpu", torch.float64).numpy().tobytes())


#: prefix of content identities (:func:`identity_of`); checkpoints of older versions hold
#: bare hex digests
IDENTITY_PREFIX = "content-v2:"


def local_weights_folder(pretrained: object) -> Path | None:
    """The folder holding a teacher's files: ``pretrained`` itself when it is a local folder,
    else the hub id's snapshot in the local Hugging Face cache (never downloaded)."""
    if not isinstance(pretrained, str) or not pretrained:
        return None
    p = Path(pretrained).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        got = snapshot_download(pretrained, local_files_only=True)
    except Exception:  # not cached, or not a hub id: fall back to the weights in memory
        return None
    return Path(got) if got and Path(got).is_dir() else None


def identity_of(info: dict[str, Any], module: nn.Module) -> str:
    """What a teacher is, by content: sha256 of ``info`` (JSON; its ``pretrained`` path left
    out when the files are found) and the fingerprint of the weights -- every file of the local
    folder or cached snapshot of ``info["pretrained"]`` (all components: denoiser, every text
    encoder, VAE, tokenizers, configs), else the ``module``'s parameters in memory. Sampled
    bytes by default, every byte with ``FEWSTEP_FINGERPRINT=full`` (memoised per file by path,
    size, mtime and inode); see :mod:`fewstep.utils.fingerprints`. The teacher-sample cache is
    keyed by it, and a student records it (``teacher_fingerprint``)."""
    folder = local_weights_folder(info.get("pretrained"))
    rest = {k: v for k, v in info.items() if not (folder is not None and k == "pretrained")}
    h = hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode())
    h.update(folder_fingerprint(folder).encode() if folder is not None
             else module_fingerprint(module).encode())
    return IDENTITY_PREFIX + h.hexdigest()


def same_teacher(recorded: str | None, identity: str) -> bool | None:
    """``True`` / ``False`` when ``recorded`` (a checkpoint's or a student's teacher identity)
    can be compared with ``identity``, ``None`` when it predates content identities (it cannot
    tell)."""
    if not recorded:
        return None
    if recorded == identity:
        return True
    if recorded.startswith((IDENTITY_PREFIX, FILE_IDENTITY_PREFIX)):
        return False
    if identity.startswith(FILE_IDENTITY_PREFIX) and \
            recorded == identity.removeprefix(FILE_IDENTITY_PREFIX):
        return True  # an older file teacher's identity: its verified sha256
    return None


#: prefix of a fewstep denoiser file's identity: the digest of its tensors
FILE_IDENTITY_PREFIX = "sha256:"


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def sampling_config(spec: TeacherSpec, sigmas: Tensor, shift: float, cfg_scale: float,
                    noise_scale: float = 1.0) -> dict[str, Any]:
    """The ``sampling`` block of a teacher config: ``shift`` (already resolved against
    ``teacher.shift``), ``cfg_scale`` = ``teacher.cfg_scale`` when set, else the teacher's
    own ``cfg_scale``."""
    w = spec.cfg_scale if spec.cfg_scale is not None else cfg_scale
    return {"steps": spec.steps, "shift": float(shift), "cfg_scale": float(w),
            "sigmas": [float(s) for s in sigmas], "noise_scale": float(noise_scale)}


__all__ = [
    "FILE_IDENTITY_PREFIX",
    "IDENTITY_PREFIX",
    "TEACHER_KINDS",
    "DataRef",
    "LoadedTeacher",
    "MetaTeacher",
    "TeacherAdapter",
    "dtype_kwargs",
    "first_line",
    "get_adapter",
    "identity_of",
    "local_weights_folder",
    "same_teacher",
    "sampling_config",
    "teacher_kinds",
    "torch_dtype",
    "weights_probe",
]
