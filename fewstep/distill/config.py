"""``fewstep distill`` configuration: one validated model, presets in ``configs/*.yaml``.

Sections: ``teacher``, ``student``, ``gan``, ``dm``, ``step1``, ``turbo``, ``sid``,
``imagine_flash``, ``cache``, ``train``, ``eval``. Unknown keys and out-of-range values are
rejected up front (see :mod:`fewstep.config`).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fewstep.config import StrictModel, user_path
from fewstep.data.problem import PROBLEMS
from fewstep.data.spec import canonical_data, is_builtin, missing_data_path
from fewstep.errors import ConfigError

#: ``data`` value of a latents + prompts run (``teacher.kind: zimage``)
PROMPTS_DATA = "prompts"

Method = Literal["turbo_pp", "sid", "imagine_flash", "dmd2", "regression"]


TeacherKind = Literal["file", "zimage", "unet_eps"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class TeacherSpec(StrictModel):
    """The frozen teacher.

    ``kind``: ``file`` (default) is a fewstep denoiser file (``path: null`` takes the shipped
    teacher for ``data``); ``zimage`` is a diffusers ``ZImagePipeline`` and ``unet_eps`` a
    VP ``UNet2DModel`` folder (``unet/`` + ``scheduler/``), both loaded from ``pretrained``
    (a local folder or a hub id; never remote code) in ``dtype``. A ``zimage`` teacher also
    needs ``prompts`` (one per line), ``resolution`` (pixels) and ``data: prompts``; its
    samples are VAE latents (see docs/real_teachers.md).
    """

    kind: TeacherKind = "file"
    path: str | None = None
    pretrained: str | None = Field(None, description="diffusers folder or hub id (kind != file)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the frozen teacher (trainable copies stay float32)")
    prompts: str | None = Field(None, description="prompt file, one prompt per line (zimage)")
    resolution: int | None = Field(None, ge=8, description="image size in pixels (zimage); "
                                   "the latent shape follows from the VAE")
    max_sequence_length: int = Field(512, ge=1, description="text-encoder tokens (zimage)")
    steps: int = Field(8, ge=1, description="teacher sampling steps (the 'real' distribution)")
    shift: float | None = Field(None, gt=0.0, description="time shift; null: the teacher's own "
                                "(file config, or the diffusers scheduler's shift)")
    cfg_scale: float | None = Field(None, description="guidance w; null: the file's own "
                                    "(1 = no CFG for diffusers teachers)")

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.endswith(".safetensors"):
            raise ValueError("must be a .safetensors denoiser file (weights are only read "
                             "from safetensors)")
        return user_path(v)

    @field_validator("prompts")
    @classmethod
    def _prompts_ok(cls, v: str | None) -> str | None:
        return None if v is None else user_path(v)

    @field_validator("pretrained")
    @classmethod
    def _pretrained_ok(cls, v: str | None) -> str | None:
        """A local folder (resolved) or an ``owner/name`` hub id (kept as is)."""
        if v is None:
            return v
        local = v.startswith(("/", ".", "~")) or Path(v).expanduser().exists()
        if local:
            return user_path(v)
        if not _HUB_ID.fullmatch(v):
            raise ValueError("must be an existing local folder or a hub id 'owner/name'")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> TeacherSpec:
        k = self.kind
        if k == "file":
            for name in ("pretrained", "prompts", "resolution"):
                if getattr(self, name) is not None:
                    raise ValueError(f"teacher.{name}: only used with teacher.kind zimage / "
                                     "unet_eps (teacher.kind is file)")
            return self
        if self.path is not None:
            raise ValueError(f"teacher.path: only used with teacher.kind file (teacher.kind is "
                             f"{k}); set teacher.pretrained instead")
        if self.pretrained is None:
            raise ValueError(f"teacher.pretrained: required for teacher.kind {k} (a diffusers "
                             "folder or hub id)")
        if k == "zimage":
            if self.prompts is None:
                raise ValueError("teacher.prompts: required for teacher.kind zimage (a text "
                                 "file, one prompt per line)")
            if self.resolution is None:
                raise ValueError("teacher.resolution: required for teacher.kind zimage "
                                 "(image size in pixels, e.g. 1024)")
        elif self.prompts is not None or self.resolution is not None:
            raise ValueError("teacher.prompts / teacher.resolution: only used with teacher.kind "
                             "zimage (a unet_eps teacher works on the data set's own shape)")
        return self


class StudentSpec(StrictModel):
    num_steps: int = Field(2, ge=1, le=64)
    parameterization: Literal["decoupled", "lora", "shared"] = "decoupled"
    transition: Literal["fresh", "ddim"] = "fresh"
    sigmas: list[float] | None = Field(None, description="custom step levels; null: teacher's")
    lora_rank: int = Field(16, ge=1)
    lora_alpha: float | None = Field(None, gt=0.0)
    lora_targets: list[str] | None = None

    @field_validator("sigmas")
    @classmethod
    def _sigmas_ok(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not v or abs(v[0] - 1.0) > 1e-6:
            raise ValueError("must start at 1.0 (pure noise)")
        if any(not 0.0 < s <= 1.0 for s in v):
            raise ValueError("every sigma must lie in (0, 1]")
        if any(b >= a for a, b in itertools.pairwise(v)):
            raise ValueError("must decrease strictly")
        return v

    @model_validator(mode="after")
    def _sigmas_len(self) -> StudentSpec:
        if self.sigmas is not None and len(self.sigmas) != self.num_steps:
            raise ValueError(f"student.sigmas has {len(self.sigmas)} entries but "
                             f"student.num_steps is {self.num_steps}")
        return self


class GanSpec(StrictModel):
    """Adversarial term (Turbo++ §1; DMD2 / SiD heads)."""

    weight: float = Field(1.0, ge=0.0, description="lambda_adv; 0 disables the GAN")
    loss: Literal["hinge", "non_saturating"] = "non_saturating"
    real: Literal["teacher", "dataset"] = "teacher"
    real_source: Literal["cache", "online"] = "cache"
    discriminator: Literal["teacher_features", "standalone"] = "teacher_features"
    layers: list[int] = Field(default_factory=lambda: [-1, -3])
    head_hidden: int = Field(128, ge=8)
    sigma_min: float = Field(0.05, gt=0.0, lt=1.0)
    sigma_max: float = Field(0.8, gt=0.0, lt=1.0)
    lr: float = Field(2e-4, gt=0.0)
    warmup: int = Field(0, ge=0, description="generator updates before the GAN term starts")

    @model_validator(mode="after")
    def _range(self) -> GanSpec:
        if self.sigma_min > self.sigma_max:
            raise ValueError(f"gan.sigma_min ({self.sigma_min}) > gan.sigma_max ({self.sigma_max})")
        return self


class DMSpec(StrictModel):
    """Distribution-matching term with its fake score network (DMD, DMD2, Turbo++ L_DM)."""

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


class Step1Spec(StrictModel):
    """Turbo++ step-1 (iterative regularisation) loss on ``x0_hat_1``."""

    loss: Literal["none", "teacher_traj", "adversarial", "dm"] = "teacher_traj"
    weight: float = Field(1.0, ge=0.0)


class TurboSpec(StrictModel):
    end_to_end: bool = Field(True, description="false detaches x_2 (ablation)")
    regression_weight: float = Field(0.0, ge=0.0, description="optional final-output "
                                     "regression onto the teacher sample from the same noise")


class SiDSpec(StrictModel):
    alpha: float = 1.2
    guidance: Literal["standard", "zero_cfg", "anti_cfg"] = "zero_cfg"
    real_cfg_scale: float = 1.0
    fake_cfg_scale: float = Field(1.0, description="fake-net w for guidance=standard")
    anti_cfg_scale: float = Field(-0.5, description="fake-net w for anti_cfg (not published)")
    gan_weight: float = Field(0.0, ge=0.0, le=1.0, description="diffusion-GAN share g: "
                              "(1 - g) L_SiD + g L_GAN (0.5 = METHODS); 0 disables")
    gan_warmup: int = Field(0, ge=0)
    sigma_mean: float = Field(0.6931471805599453, description="loss level sigma ~ "
                              "sigmoid(N(mean, std^2)); ln 2")
    sigma_std: float = Field(1.6, gt=0.0)
    sigma_clamp: float = Field(1e-3, gt=0.0, lt=0.5, description="sigma kept in [c, 1 - c]")


class ImagineFlashSpec(StrictModel):
    tau_min: float = Field(0.1, ge=0.0, le=1.0)
    tau_max: float = Field(0.9, ge=0.0, le=1.0)
    beta_power: float = Field(1.0, gt=0.0, description="tau = tau_min + (tau_max - tau_min) "
                              "t^p; 1 = linear")
    renoise: Literal["fresh", "student"] = Field(
        "student", description="noise of x_tau: fresh N(0, I), or the noise the student's own "
        "input implies, eps_k = (x_k - (1 - sigma_k) x0_theta) / sigma_k")
    target_steps: int = Field(1, ge=1, description="1: the teacher's x0 prediction at "
                              "(x_tau, tau) (METHODS); N > 1: its N-step Euler solve tau -> 0")
    cfg_scale: float | None = None

    @model_validator(mode="after")
    def _range(self) -> ImagineFlashSpec:
        if self.tau_min > self.tau_max:
            raise ValueError(f"imagine_flash.tau_min ({self.tau_min}) > imagine_flash.tau_max "
                             f"({self.tau_max})")
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
    batch_size: int = Field(128, ge=1, description="global batch: with N processes (torchrun / "
                            "accelerate launch) each rank draws batch_size / N of it")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with more than one process: ddp (replicated student, averaged "
        "gradients) or fsdp (sharded trainable networks); ignored with one process")
    lr: float = Field(1e-4, gt=0.0)
    betas: tuple[float, float] = (0.0, 0.99)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    aux_ratio: int = Field(1, ge=1, description="aux (D / fake score) updates per G update")
    seed: int = 0
    device: str = "cpu"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    compile: bool = Field(False, description="torch.compile the student's step modules (first "
                          "iterations are slow while it compiles; needs a C++ compiler on CPU)")
    log_every: int = Field(25, ge=1)
    sample_every: int = Field(0, ge=0, description="0: only at the end")
    ckpt_every: int = Field(0, ge=0, description="0: only at the end")
    keep_last: int = Field(3, ge=1)
    lr_warmup: int = Field(0, ge=0, description="linear LR warm-up (generator updates) for the "
                           "student and aux optimizers; 0: constant LR")
    on_divergence: Literal["stop", "rollback"] = Field(
        "stop", description="NaN / Inf in a loss or gradient: stop, or reload the last good "
        "checkpoint and continue with the LR times rollback_lr_factor")
    rollback_lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    max_rollbacks: int = Field(3, ge=1, description="rollbacks before giving up")

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
    seed: int = 1234


class DistillConfig(StrictModel):
    method: Method = "turbo_pp"
    data: str | dict[str, Any] = Field(
        "digits", description="a built-in name, a path (image folder, .npy / .npz / "
        ".safetensors, saved datasets folder) or a mapping {path: ..., options} (see "
        "docs/own_images.md); stored in canonical form")
    teacher: TeacherSpec = TeacherSpec()
    student: StudentSpec = StudentSpec()
    gan: GanSpec = GanSpec()
    dm: DMSpec = DMSpec()
    step1: Step1Spec = Step1Spec()
    turbo: TurboSpec = TurboSpec()
    sid: SiDSpec = SiDSpec()
    imagine_flash: ImagineFlashSpec = ImagineFlashSpec()
    cache: CacheSpec = CacheSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()

    @field_validator("data")
    @classmethod
    def _data_known(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        if v == PROMPTS_DATA or is_builtin(v):
            return v
        try:  # validates the options and resolves paths; the data are read by the trainer
            canon = canonical_data(v)
        except ConfigError as e:
            raise ValueError(f"{str(e).removeprefix('data: ')} (built-in: "
                             f"{', '.join(PROBLEMS)}; {PROMPTS_DATA} with teacher.kind "
                             f"zimage)") from None
        if (missing := missing_data_path(canon)) is not None:
            raise ValueError(f"unknown data set; choose from {', '.join(PROBLEMS)} (or "
                             f"{PROMPTS_DATA} with teacher.kind zimage), or a path to your "
                             f"images (no such file or folder: {missing})")
        return canon

    @model_validator(mode="after")
    def _teacher_fits_data(self) -> DistillConfig:
        text = self.teacher.kind == "zimage"
        if text and self.data != PROMPTS_DATA:
            raise ValueError(f"data: must be {PROMPTS_DATA!r} for teacher.kind zimage (latents "
                             f"+ prompts from teacher.prompts), got {self.data!r}")
        if not text and self.data == PROMPTS_DATA:
            raise ValueError(f"data: {PROMPTS_DATA!r} needs teacher.kind zimage")
        if text and self.gan.real == "dataset":
            raise ValueError("gan.real: 'dataset' is not available for teacher.kind zimage (a "
                             "prompts run has no image data set); use gan.real=teacher")
        if self.teacher.kind == "unet_eps" and is_builtin(self.data) and self.data != "digits":
            raise ValueError(f"data: teacher.kind unet_eps needs an image data set (digits or "
                             f"your own images), got {self.data!r}")
        return self
