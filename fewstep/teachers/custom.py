"""``teacher.kind: custom`` -- any PyTorch network as a teacher, through a builder function.

``teacher.builder: "package.module:function"`` names a function taking no arguments that
returns a :class:`CustomTeacher` (the network with its weights loaded, and what it is)::

    # mypkg/teacher.py
    from fewstep.teachers import CustomTeacher

    def build() -> CustomTeacher:
        net = MyNet()                                # net(x, t, cond) -> out
        net.load_state_dict(safetensors.torch.load_file("my_teacher.safetensors"))
        return CustomTeacher(net, data_shape=(1, 8, 8), prediction="velocity",
                             time_input="sigma", num_classes=10, steps=8)

The student file records the builder string; reloading it (``load_student``, ``export``,
``sample``) calls the builder again, which is only allowed when the run's config names it
(:func:`allow_builder`), never because a file says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fewstep.core.denoiser import NetworkDenoiser, Prediction, TimeInput
from fewstep.core.levels import resolve_teacher_sigmas
from fewstep.data.problem import Problem, builtin_names, get_problem
from fewstep.data.prompts import PROMPTS_DATA, PromptProblem
from fewstep.errors import ConfigError
from fewstep.teachers.base import (
    TEACHER_KINDS,
    DataRef,
    LoadedTeacher,
    MetaTeacher,
    TeacherAdapter,
    identity_of,
    sampling_config,
)
from fewstep.teachers.diffusers.prompt_cache import PromptCache
from fewstep.utils.imports import import_callable

if TYPE_CHECKING:
    from fewstep.teachers.spec import TeacherSpec

@dataclass
class CustomTeacher:
    """What a ``teacher.builder`` returns.

    Attributes:
        network: ``network(x, t, cond) -> out`` with ``x (B, *data_shape)``, ``t (B,)`` the
            time input, ``cond`` labels ``(B,)`` long / a ``PromptEmbeds`` / ``None``.
        data_shape: one sample, e.g. ``(1, 8, 8)`` or a latent ``(16, 64, 64)``.
        prediction: ``velocity`` (``eps - x0``), ``neg_velocity``, ``epsilon`` or ``x0``.
        time_input: ``sigma``, ``one_minus_sigma``, ``sigma_1000`` or ``one_minus_sigma_1000``.
        num_classes: class labels ``0 .. C - 1`` (0: unconditional); with ``null_class`` the
            label ``C`` is the unconditional one (CFG).
        steps / shift / cfg_scale: sampling defaults (``teacher.*`` overrides).
        encode_prompts: ``prompts -> [(L_i, D), ...]`` for ``data: prompts`` (cached).
    """

    network: nn.Module
    data_shape: tuple[int, ...]
    prediction: Prediction = "velocity"
    time_input: TimeInput = "sigma"
    num_classes: int = 0
    null_class: bool = True
    steps: int = 8
    shift: float = 1.0
    cfg_scale: float = 1.0
    encode_prompts: Callable[[list[str]], list[Tensor]] | None = None


_ALLOWED: set[str] = set()


def allow_builder(builder: str | None) -> None:
    """Let :func:`custom_denoiser` call ``builder`` (the run's config names it)."""
    if builder:
        _ALLOWED.add(builder)


def call_builder(builder: str) -> CustomTeacher:
    """Import and call ``"package.module:function"``; ``ConfigError`` naming
    ``teacher.builder`` if it does not import or does not return a :class:`CustomTeacher`."""
    try:
        obj = import_callable(builder)
    except ValueError as e:
        raise ConfigError(f"teacher.builder: cannot import {builder!r}: {e}") from None
    spec = obj()
    if not isinstance(spec, CustomTeacher):
        raise ConfigError(f"teacher.builder: {builder!r} returned {type(spec).__name__}, not a "
                          "fewstep.teachers.CustomTeacher")
    if not isinstance(spec.network, nn.Module):
        raise ConfigError(f"teacher.builder: {builder!r} returned a CustomTeacher whose network "
                          f"is {type(spec.network).__name__}, not a torch.nn.Module")
    return spec


def _denoiser(spec: CustomTeacher) -> NetworkDenoiser:
    null = None
    if spec.num_classes > 0 and spec.null_class:
        c = spec.num_classes

        def null(cond: Any) -> Any:
            return None if cond is None else torch.full_like(cond, c)
    try:
        return NetworkDenoiser(spec.network, spec.prediction, spec.time_input, null)
    except ValueError as e:
        raise ConfigError(f"teacher.builder: {e}") from None


def custom_denoiser(builder: str) -> NetworkDenoiser:
    """Rebuild a custom teacher's denoiser (student reload / export); only for builders the
    run's config names (:func:`allow_builder`)."""
    if builder not in _ALLOWED:
        raise ConfigError(f"teacher.builder: {builder!r} is recorded in the file but not named by "
                          "the run's config; allow it with the run's config (teacher.builder) "
                          f"or, on the command line, --allow-builder {builder}")
    return _denoiser(call_builder(builder))


@TEACHER_KINDS.register("custom")
class CustomTeacherAdapter(TeacherAdapter):
    fields = ("builder", "prompts")

    def check(self, spec: TeacherSpec) -> None:
        super().check(spec)
        if spec.builder is None:
            raise ValueError("teacher.builder: required for teacher.kind custom "
                             "('package.module:function' returning a CustomTeacher)")
        if spec.levels == "pipeline":
            raise ValueError("teacher.levels: 'pipeline' needs a diffusers teacher")

    def check_data(self, spec: TeacherSpec, data: DataRef) -> None:
        if data == PROMPTS_DATA and spec.prompts is None:
            raise ValueError("teacher.prompts: required with data: prompts")

    def _built(self, spec: TeacherSpec) -> CustomTeacher:
        assert spec.builder is not None
        allow_builder(spec.builder)
        return call_builder(spec.builder)

    def _problem(self, spec: TeacherSpec, data: DataRef, cache_dir: str, built: CustomTeacher,
                 den: nn.Module) -> Any:
        shape = tuple(int(s) for s in built.data_shape)
        if data == PROMPTS_DATA:
            if built.encode_prompts is None:
                raise ConfigError("teacher.builder: data: prompts needs CustomTeacher."
                                  "encode_prompts")
            assert spec.prompts is not None
            from fewstep.teachers.diffusers.adapter import check_prompt_file

            check_prompt_file(spec.prompts)
            fp = identity_of({"builder": spec.builder}, den)
            folder = cache_dir + "/prompt_embeds/" + fp[:16]
            return PromptProblem(shape, PromptCache(folder, spec.prompts,
                                                    built.encode_prompts, fp))
        if data not in builtin_names():
            raise ConfigError(f"data: unknown data set {data!r}")
        prob = get_problem(data)
        if tuple(prob.data_shape) != shape:
            raise ConfigError(f"teacher.builder: the network takes samples of shape {shape} but "
                              f"data {data!r} has shape {tuple(prob.data_shape)}")
        return Problem(prob.name, prob.data_shape, min(built.num_classes, prob.num_classes))

    def load(self, spec: TeacherSpec, *, data: DataRef, cache_dir: str, device: torch.device
             ) -> LoadedTeacher:
        built = self._built(spec)
        den = _denoiser(built).to(device).eval().requires_grad_(False)
        problem = self._problem(spec, data, cache_dir, built, den)
        shift = spec.shift or built.shift
        sig, scale = resolve_teacher_sigmas(spec.levels or "uniform", spec.steps, shift)
        tcfg = {"kind": "custom", "builder": ["fewstep.teachers.custom:custom_denoiser",
                                              {"builder": spec.builder}],
                "user_builder": spec.builder, "dtype": spec.dtype, "data": data,
                "latent_shape": list(built.data_shape),
                "sampling": sampling_config(spec, sig, shift, built.cfg_scale, scale)}
        return LoadedTeacher(den, tcfg, identity_of(tcfg, den), problem)

    def meta(self, spec: TeacherSpec, *, data: DataRef) -> MetaTeacher:
        built = self._built(spec)
        return MetaTeacher(_denoiser(built), tuple(built.data_shape), built.num_classes,
                           {"kind": "custom", "builder": spec.builder})


__all__ = ["CustomTeacher", "allow_builder", "call_builder", "custom_denoiser"]
