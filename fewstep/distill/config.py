"""``fewstep distill`` configuration: one validated model per method, presets in YAML.

The run config is a union discriminated on ``method``: every method file under
:mod:`fewstep.distill.methods` defines a subclass of :class:`DistillConfig` (the sections all
runs share: ``data``, ``teacher``, ``student``, ``cache``, ``train``, ``eval``) that adds the
sections the method reads, and registers it (:func:`register_config`, called by
:func:`fewstep.distill.methods.registry.register`). ``DistillConfig.model_validate(data)``
picks the registered class from ``data["method"]`` (default ``turbo_pp``); a section the method
does not read is rejected with a one-line reason. Shared blocks that several methods include:
:class:`GanSpec` (``gan:``) and :class:`DMSpec` (``dm:``, the fake score / distribution
matching). Unknown keys and out-of-range values are rejected up front (see
:mod:`fewstep.utils.config_files`).
"""

from __future__ import annotations

import importlib.util
import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from fewstep.data.problem import builtin_names
from fewstep.data.prompts import PROMPTS_DATA
from fewstep.data.spec import canonical_data, is_builtin, missing_data_path
from fewstep.errors import ConfigError
from fewstep.student.spec import StudentSpec
from fewstep.teachers import LoadedTeacher, MetaTeacher, load_teacher, meta_teacher
from fewstep.teachers.base import get_adapter
from fewstep.teachers.spec import TeacherSpec
from fewstep.utils.config_files import Seed, StrictModel, user_path
from fewstep.utils.registry import load_plugins, plugins_of

#: the method a config without ``method:`` gets
DEFAULT_METHOD = "turbo_pp"


RealSource = Literal["teacher_cache", "teacher_online", "dataset"]
#: where training curves go (``trackers``)
Tracker = Literal["tensorboard", "wandb"]


class GanSpec(StrictModel):
    """Adversarial block shared by the methods with a GAN (Turbo++, DMD2, SiD's head, LADD).

    ``lr`` is the learning rate of every trainable discriminator part (heads, standalone
    discriminator) in every method that includes this block; ``real`` / ``real_source`` say where
    the "real" samples come from (see :meth:`real_from`).
    """

    weight: float = Field(1.0, ge=0.0, description="lambda_adv; 0 disables the GAN")
    loss: Literal["hinge", "non_saturating"] = "non_saturating"
    real: Literal["teacher", "dataset"] = "teacher"
    real_source: Literal["cache", "online"] = "cache"
    discriminator: Literal["teacher_features", "standalone"] = "teacher_features"
    layers: list[int] = Field(default_factory=lambda: [-1, -3])
    head_hidden: int = Field(128, ge=8)
    sigma_min: float = Field(0.05, gt=0.0, lt=1.0)
    sigma_max: float = Field(0.8, gt=0.0, lt=1.0)
    lr: float = Field(2e-4, gt=0.0, description="discriminator (head) learning rate")
    warmup: int = Field(0, ge=0, description="generator updates before the GAN term starts")

    @model_validator(mode="after")
    def _range(self) -> GanSpec:
        if self.sigma_min > self.sigma_max:
            raise ValueError(f"gan.sigma_min ({self.sigma_min}) > gan.sigma_max ({self.sigma_max})")
        return self

    def real_from(self) -> RealSource:
        """Where the discriminator's real samples come from."""
        if self.real == "dataset":
            return "dataset"
        return "teacher_cache" if self.real_source == "cache" else "teacher_online"


class DMSpec(StrictModel):
    """Distribution-matching block with its fake score network (DMD, DMD2, Turbo++ L_DM; SiD
    trains its fake score at ``fake_lr``)."""

    weight: float = Field(0.0, ge=0.0, description="lambda_dm; 0 disables")
    cfg_scale: float | None = Field(None, description="teacher guidance for the real score")
    fake_lr: float = Field(2e-4, gt=0.0)
    sigma_min: float = Field(0.02, gt=0.0, lt=1.0)
    sigma_max: float = Field(0.98, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _range(self) -> DMSpec:
        if self.sigma_min > self.sigma_max:
            raise ValueError(f"dm.sigma_min ({self.sigma_min}) > dm.sigma_max ({self.sigma_max})")
        return self


class CacheSpec(StrictModel):
    dir: str = Field("~/.cache/fewstep/teacher_samples")
    size: int = Field(20000, ge=1)
    shard_size: int = Field(5000, ge=1)
    batch_size: int = Field(1000, ge=1, description="teacher generations per forward while "
                            "building the cache (lower it for large teachers)")

    @field_validator("dir")
    @classmethod
    def _dir_ok(cls, v: str) -> str:
        return user_path(v)


class TrainSpec(StrictModel):
    iterations: int = Field(600, ge=1, description="generator updates")
    batch_size: int = Field(128, ge=1, description="global batch: with N processes (torchrun) "
                            "each rank draws batch_size / N of it")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with more than one process: ddp (replicated student, averaged "
        "gradients) or fsdp (sharded trainable networks); ignored with one process")
    lr: float = Field(1e-4, gt=0.0, description="student learning rate")
    betas: tuple[float, float] = (0.0, 0.99)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0, description="student gradient-norm clip")
    aux_grad_clip: float = Field(10.0, gt=0.0, description="gradient-norm clip of the "
                                 "auxiliary networks (discriminator / fake score)")
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    aux_ratio: int = Field(1, ge=1, description="aux (D / fake score) updates per G update, "
                           "for methods with auxiliary networks")
    seed: Seed = 0
    device: str = "cpu"
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA (where supported), float32 elsewhere; "
        "fp16 runs with a gradient scaler (see fewstep/distill/engine/precision.py)")
    gradient_checkpointing: bool = False
    compile: bool = Field(False, description="torch.compile the student's step modules (first "
                          "iterations are slow while it compiles; needs a C++ compiler on CPU)")
    log_every: int = Field(25, ge=1)
    sample_every: int = Field(0, ge=0, description="0: only at the end")
    eval_every: int = Field(0, ge=0, description="the fixed evaluation (eval.prompts x "
                            "eval.seeds: FID-T, diversity, image statistics, grid) every N "
                            "generator updates, logged to the trackers; 0: off")
    trackers: list[Tracker] = Field(
        default_factory=lambda: list[Tracker](["tensorboard"]),
        description="where curves go; wandb is optional (pip install wandb), offline unless "
        "WANDB_MODE is set")
    ckpt_every: int = Field(0, ge=0, description="0: only at the end")
    keep_last: int = Field(3, ge=1)
    lr_warmup: int = Field(0, ge=0, description="linear LR warm-up (generator updates) for the "
                           "student and aux optimizers; 0: constant LR")
    on_divergence: Literal["stop", "rollback"] = Field(
        "stop", description="NaN / Inf in a loss or gradient: stop, or reload the last good "
        "checkpoint and continue with the LR times rollback_lr_factor")
    rollback_lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    max_rollbacks: int = Field(3, ge=1, description="rollbacks before giving up")
    rollbacks_per_checkpoint: int = Field(
        1, ge=1, description="rollbacks to the same checkpoint (without a newer one written "
        "since) before walking back to the next older good checkpoint")

    @field_validator("trackers")
    @classmethod
    def _trackers_ok(cls, v: list[str]) -> list[str]:
        if "wandb" in v and importlib.util.find_spec("wandb") is None:
            raise ValueError("wandb is not installed (pip install wandb), or remove it")
        return v

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_is_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML reads a bare ``no`` as false

    @field_validator("betas")
    @classmethod
    def _betas_ok(cls, v: tuple[float, float]) -> tuple[float, float]:
        if any(not 0.0 <= b < 1.0 for b in v):
            raise ValueError("each beta must lie in [0, 1)")
        return v

    @field_validator("device")
    @classmethod
    def _device_ok(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", v):
            raise ValueError("must be cpu, cuda, cuda:<index> or mps")
        return v


class EvalSpec(StrictModel):
    num_samples: int = Field(2000, ge=10)
    seed: Seed = 1234
    features: str = Field("auto", description="feature space of train.eval_every: auto (the "
                          "data's default; prompts: pixels), pixels, clip:FOLDER, "
                          "torchscript:FILE, classifier:FILE, builder:pkg.mod:fn")
    clip: str | None = Field(None, description="a local CLIP folder for the CLIP score")
    prompts: int = Field(8, ge=1, description="prompts (or classes) of the fixed evaluation")
    seeds: int = Field(4, ge=1, description="seeds per prompt (diversity needs >= 2)")
    collapse_below: float = Field(0.5, gt=0.0, le=1.0, description="diversity ratio to the "
                                  "teacher below which a collapse is flagged")


#: method name -> its config class (filled by :func:`register_config`)
METHOD_CONFIGS: dict[str, type[DistillConfig]] = {}


class DistillConfig(StrictModel):
    """The sections every run has; a method's config subclasses it and adds its own.

    ``DistillConfig.model_validate(data)`` returns the registered subclass for
    ``data["method"]``; subclasses validate as usual.
    """

    COMMON: ClassVar[tuple[str, ...]] = ("method", "plugins", "data", "teacher", "student",
                                         "cache", "train", "eval")

    method: str = DEFAULT_METHOD
    plugins: list[str] = Field(
        default_factory=list, description="modules imported before the config is validated, "
        "whose methods / teacher kinds / families / data sets register themselves "
        "(fewstep.utils.registry)")
    data: str | dict[str, Any] = Field(
        "digits", description="a built-in name, a path (image folder, .npy / .npz / "
        ".safetensors, saved datasets folder) or a mapping {path: ..., options} (see "
        "docs/own_images.md); stored in canonical form")
    teacher: TeacherSpec = TeacherSpec()
    student: StudentSpec = StudentSpec()
    cache: CacheSpec = CacheSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> DistillConfig:
        """Validate ``obj``; on the base class, as the config of ``obj["method"]``."""
        if cls is DistillConfig and isinstance(obj, DistillConfig):
            return obj
        if not isinstance(obj, dict):
            return super().model_validate(obj, **kwargs)
        load_plugins(plugins_of(obj))  # a user's entries register before the lookups below
        data = {"method": DEFAULT_METHOD, **obj}
        target: type[DistillConfig] = cls
        if cls is DistillConfig:
            found = METHOD_CONFIGS.get(data["method"])
            if found is None:
                known = [repr(m) for m in sorted(METHOD_CONFIGS)]
                err = PydanticCustomError(
                    "literal_error", "Input should be {expected} (the registered methods)",
                    {"expected": ", ".join(known[:-1]) + " or " + known[-1]})
                raise ValidationError.from_exception_data(
                    cls.__name__, [InitErrorDetails(type=err, loc=("method",),
                                                    input=data["method"])])
            target = found
        data = target._own_sections(data)
        return super(DistillConfig, target).model_validate(data, **kwargs)

    @classmethod
    def sections(cls) -> tuple[str, ...]:
        """The method's own top-level sections (beyond :attr:`COMMON`)."""
        return tuple(k for k in cls.model_fields if k not in cls.COMMON)

    @classmethod
    def _own_sections(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` without other methods' sections. Such a section is an error naming the
        method's own sections, unless every value it sets is that section's default (it would
        change nothing; e.g. the ``config.yaml`` of a run written before sections were per
        method): then it is dropped."""
        others = {s for c in METHOD_CONFIGS.values() for s in c.sections()}
        foreign = [k for k in data if k not in cls.model_fields and k in others]
        for key in foreign:
            if not _is_default_section(key, data[key]):
                used = ", ".join(cls.sections()) or "none"
                err = PydanticCustomError(
                    "unused_section", "section not used by method {method} (its sections: "
                    "{used}); remove it", {"method": data["method"], "used": used})
                raise ValidationError.from_exception_data(
                    cls.__name__, [InitErrorDetails(type=err, loc=(key,), input=data[key])])
        return {k: v for k, v in data.items() if k not in foreign}

    @field_validator("data")
    @classmethod
    def _data_known(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        if v == PROMPTS_DATA or is_builtin(v):
            return v
        try:  # validates the options and resolves paths; the data are read by the trainer
            canon = canonical_data(v)
        except ConfigError as e:
            raise ValueError(f"{str(e).removeprefix('data: ')} (built-in: "
                             f"{', '.join(builtin_names())}; {PROMPTS_DATA} with teacher.prompts)"
                             ) from None
        if (missing := missing_data_path(canon)) is not None:
            raise ValueError(f"unknown data set; choose from {', '.join(builtin_names())} (or "
                             f"{PROMPTS_DATA} with teacher.prompts), or a path to your images "
                             f"(no such file or folder: {missing})")
        return canon

    @model_validator(mode="after")
    def _teacher_fits_data(self) -> DistillConfig:
        """The teacher kind's adapter checks its section and which data fit it; any kind may
        take prompts."""
        try:
            adapter = get_adapter(self.teacher.kind)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        adapter.check(self.teacher)
        if self.data == PROMPTS_DATA and self.teacher.prompts is None:
            raise ValueError(f"teacher.prompts: data {PROMPTS_DATA!r} needs a prompt file")
        if self.data != PROMPTS_DATA and self.teacher.prompts is not None:
            raise ValueError(f"data: must be {PROMPTS_DATA!r} when teacher.prompts is set, got "
                             f"{self.data!r}")
        gan = getattr(self, "gan", None)
        if self.data == PROMPTS_DATA and isinstance(gan, GanSpec) and gan.real == "dataset":
            raise ValueError("gan.real: 'dataset' is not available with data: prompts (no "
                             "image data set); use gan.real=teacher")
        adapter.check_data(self.teacher, self.data)
        return self


def _is_default_section(key: str, value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for c in METHOD_CONFIGS.values():
        field = c.model_fields.get(key)
        default = getattr(field, "default", None)
        if isinstance(default, StrictModel):
            dump = default.model_dump(mode="json")
            if all(k in dump and dump[k] == _json_like(v) for k, v in value.items()):
                return True
    return False


def _json_like(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def register_config(name: str, config: type[DistillConfig]) -> None:
    """Make ``config`` the config class of ``method: name``.

    ``config`` must declare ``method: Literal[name]`` (the union's discriminator)."""
    ann = config.model_fields["method"].annotation
    if getattr(ann, "__args__", None) != (name,):
        raise TypeError(f"{config.__name__}.method must be Literal[{name!r}]")
    if name in METHOD_CONFIGS and METHOD_CONFIGS[name] is not config:
        raise ValueError(f"method {name!r} is already registered")
    METHOD_CONFIGS[name] = config
    _ADAPTER.clear()


_ADAPTER: dict[str, TypeAdapter[Any]] = {}


def config_union() -> Any:
    """``Annotated[Union[<every registered config>], Field(discriminator="method")]``."""
    if not METHOD_CONFIGS:
        raise RuntimeError("no distillation method is registered (import fewstep.distill)")
    members = tuple(METHOD_CONFIGS.values())
    union = members[0] if len(members) == 1 else Union[members]  # noqa: UP007
    return Annotated[union, Field(discriminator="method")]


def config_adapter() -> TypeAdapter[Any]:
    """A pydantic ``TypeAdapter`` over :func:`config_union` (rebuilt after a registration)."""
    if "union" not in _ADAPTER:
        _ADAPTER["union"] = TypeAdapter(config_union())
    return _ADAPTER["union"]


def load_run_teacher(cfg: DistillConfig, device: Any) -> LoadedTeacher:
    """The run's frozen teacher: ``teacher`` for the run's ``data``, its derived caches (prompt
    embeddings) under ``cache.dir``."""
    return load_teacher(cfg.teacher, data=cfg.data, cache_dir=cfg.cache.dir, device=device)


def meta_run_teacher(cfg: DistillConfig) -> MetaTeacher:
    """The run's teacher network on the ``meta`` device, from configs only (``fewstep plan``)."""
    return meta_teacher(cfg.teacher, data=cfg.data)


def drop_foreign_sections(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a raw run config) without the sections only *other* methods read: lets one
    base config (e.g. a Turbo++ preset) serve every ``method``, as benchmarks and tests do."""
    own = METHOD_CONFIGS[data.get("method", DEFAULT_METHOD)].model_fields
    others = {s for c in METHOD_CONFIGS.values() for s in c.sections()}
    return {k: v for k, v in data.items() if k in own or k not in others}


__all__ = [
    "DEFAULT_METHOD",
    "METHOD_CONFIGS",
    "PROMPTS_DATA",
    "CacheSpec",
    "DMSpec",
    "DistillConfig",
    "EvalSpec",
    "GanSpec",
    "RealSource",
    "StudentSpec",
    "TeacherSpec",
    "TrainSpec",
    "ValidationError",
    "config_adapter",
    "config_union",
    "drop_foreign_sections",
    "load_run_teacher",
    "meta_run_teacher",
    "register_config",
]
