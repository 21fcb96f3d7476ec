"""What the sampling code of an exported pipeline student needs (``fewstep_student.json``,
family ``pipeline``): the teacher's pipeline class and call, the ``__call__`` arguments that
switch its guidance off, the :class:`~fewstep.export.student_scheduler.StudentScheduler`'s
settings (the scheduler's times of the student's levels, the path and prediction type, the
epsilon clamp) and how the pipeline draws its noise (so ``fewstep sample`` draws the same)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from fewstep.teachers.diffusers.pipeline_denoiser import PipelineDenoiser
from fewstep.teachers.diffusers.pipeline_reading import single_call_kwargs


def teacher_call(tcfg: dict[str, Any]) -> dict[str, Any]:
    """The ``__call__`` kwargs the teacher was read with (``teacher.call_kwargs`` and
    ``max_sequence_length``; height / width: the teacher's resolution)."""
    call = dict(tcfg.get("call_kwargs") or {})
    if tcfg.get("max_sequence_length") is not None:
        call["max_sequence_length"] = int(tcfg["max_sequence_length"])
    return call


def pipeline_info(den0: PipelineDenoiser, sigmas: Tensor, tcfg: dict[str, Any], pipeline: Any,
                  transition: str) -> dict[str, Any]:
    """The family-``pipeline`` part of ``fewstep_student.json`` (``den0``: step 0's
    :class:`~fewstep.teachers.diffusers.pipeline_denoiser.PipelineDenoiser`)."""
    if pipeline is None:
        raise ValueError("exporting a pipeline student needs the teacher pipeline")
    res = int(tcfg["resolution"])
    call = teacher_call(tcfg)
    read = {**call, "height": res, "width": res, "num_inference_steps": 2,
            "output_type": "latent"}
    decoder = next((m for n, m in pipeline.components.items() if n in ("vae", "movq")
                    and isinstance(m, nn.Module)), None)
    out: dict[str, Any] = {
        "pipeline_class": type(pipeline).__name__,
        "network_class": type(den0.network).__name__,
        "height": res, "width": res, "call": call,
        "attributes": dict(tcfg.get("attributes") or {}),
        "sampling_call": single_call_kwargs(pipeline, den0.spec, read),
        "scheduler": {"vp": den0.path == "vp", "prediction": den0.prediction_type,
                      "times": [float(t) for t in den0.scheduler_time(sigmas).tolist()],
                      "transition": transition,
                      "min_one_minus_sigma": float(den0.min_one_minus_sigma),
                      "num_train_timesteps": int(pipeline.scheduler.config.get(
                          "num_train_timesteps", 1000))},
        "noise": {"input_layout": tcfg.get("input_layout"),
                  "loop_layout": tcfg.get("loop_layout"),
                  "dtype": tcfg.get("noise_dtype", "float32")},
    }
    if decoder is not None:
        out["dtypes"] = {"pipeline": str(next(decoder.parameters()).dtype).removeprefix("torch.")}
    return out


__all__ = ["pipeline_info", "teacher_call"]
