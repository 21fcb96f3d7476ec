"""Multi-process training: 2 CPU processes (gloo) vs. one process with the same global batch.

One ``torch.multiprocessing.spawn`` of two workers runs every scenario in turn (the process
group is created by the first Trainer and reused); the one-process references run in the test
process itself. ``regression`` with the deterministic ``ddim`` transition uses no randomness
inside the loss, so with the global batch split across ranks the averaged gradient equals the
one-process gradient and the runs must agree to float tolerance.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from fewstep.distill.config import DistillConfig
from fewstep.teachers.training import NetworkConfig, TeacherConfig, train_teacher
from fewstep.utils.config_files import validate

ITERS = 4
#: student parameterizations run on the tiny Z-Image teacher (ddp and fsdp each)
ZIMAGE_PARAMS = ("decoupled", "lora")


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mp_teacher") / "teacher.safetensors"
    train_teacher(TeacherConfig(data="checkerboard", network=NetworkConfig(hidden=32, depth=2,
                                                                         emb=16),
                                steps=100, batch_size=256), out=path, progress=False)
    return path


def _cfg(teacher: Path, tmp: Path, method: str, **train: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "method": method, "data": "checkerboard", "teacher": {"path": str(teacher), "steps": 4},
        "student": {"num_steps": 2, "transition": "ddim"},
        "cache": {"dir": str(tmp / "cache"), "size": 256, "shard_size": 256},
        "train": {"iterations": ITERS, "batch_size": 64, "lr": 1e-3, "ema_decay": 0.5,
                  "log_every": 1, **train},
        "eval": {"num_samples": 10}}
    if method == "turbo_pp":
        data["gan"] = {"weight": 0.5, "head_hidden": 16, "layers": [-1]}
        data["student"]["transition"] = "fresh"
    return data


def _zimage_cfg(tmp: Path, param: str, **train: Any) -> dict[str, Any]:
    """Regression (deterministic ddim transition, float32) on the tiny Z-Image teacher."""
    return {"method": "regression", "data": "prompts",
            "teacher": {"kind": "zimage", "pretrained": str(tmp / "zimage"), "dtype": "float32",
                        "prompts": str(tmp / "prompts.txt"), "resolution": 16,
                        "max_sequence_length": 16, "steps": 4, "shift": 3.0},
            "student": {"num_steps": 2, "parameterization": param, "lora_rank": 2,
                        "transition": "ddim"},
            "cache": {"dir": str(tmp / "zcache"), "size": 8, "shard_size": 4, "batch_size": 4},
            "train": {"iterations": 2, "batch_size": 4, "lr": 1e-3, "ema_decay": 0.5,
                      "log_every": 1, "gradient_checkpointing": True, **train},
            "eval": {"num_samples": 10}}


def _scenarios(teacher: Path, tmp: Path) -> dict[str, dict[str, Any]]:
    return {"reg_ddp": _cfg(teacher, tmp, "regression"),
            "reg_fsdp": _cfg(teacher, tmp, "regression", distributed="fsdp"),
            "turbo_ddp": _cfg(teacher, tmp, "turbo_pp", aux_ratio=2),
            "reg_half": _cfg(teacher, tmp, "regression", iterations=2, ckpt_every=2),
            **{f"zi_{param}_{mode}": _zimage_cfg(tmp, param, distributed=mode)
               for param in ZIMAGE_PARAMS for mode in ("ddp", "fsdp")}}


def _train(data: dict[str, Any], run_dir: Path, resume: bool = False) -> Any:
    from fewstep.distill.trainer import Trainer

    tr = Trainer(validate(DistillConfig, data), run_dir, progress=False, resume=resume)
    tr.train()
    return tr


def _full_state(tr: Any) -> dict[str, torch.Tensor]:
    from fewstep.distill.engine.fsdp import FullStateView, full_tensor

    out = {}
    for name, m in (("student", tr.student), ("ema", tr.ema), ("method", tr.method)):
        sd = FullStateView(m).state_dict()
        out.update({f"{name}/{k}": v.detach().clone().contiguous() for k, v in sd.items()})
    # the last update's gradients (averaged over ranks): equal to the one-process gradient
    for n, p in tr.student.named_parameters():
        if p.grad is not None:
            out[f"grad/{n}"] = full_tensor(p.grad).detach().clone().contiguous()
    return out


def _worker(rank: int, world: int, port: int, teacher: str, tmp: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    root = Path(tmp)
    tr = None
    for name, data in _scenarios(Path(teacher), root).items():
        tr = _train(data, root / f"{name}_mp")
        save_file(_full_state(tr), str(root / f"{name}_rank{rank}.safetensors"))
        if name == "zi_lora_fsdp":
            save_file(_sharded_samples(tr), str(root / f"sharded_samples_rank{rank}.safetensors"))
    # resume: continue reg_half (2 iterations, checkpointed) to ITERS on every rank
    tr = _train(_cfg(Path(teacher), root, "regression", ckpt_every=2), root / "reg_half_mp",
                resume=True)
    save_file(_full_state(tr), str(root / f"reg_resumed_rank{rank}.safetensors"))
    _stop_on_one_rank(rank, Path(teacher), root)
    tr.dist.shutdown()


def _sharded_samples(tr: Any) -> dict[str, torch.Tensor]:
    """The FSDP-sharded LoRA student sampled under no_grad, inference_mode and inside its
    merged() block (a sharded adapter is never merged: all three use the unmerged sum)."""
    st, cond = tr.student, tr.teacher.problem.cond_map(torch.tensor([0, 1]))
    noise = torch.randn(2, *tr.teacher.problem.data_shape,
                        generator=torch.Generator().manual_seed(0))

    def run() -> torch.Tensor:
        return st.generate(noise, cond, generator=torch.Generator().manual_seed(1)).sample

    with torch.no_grad():
        plain = run()
        with st.merged():
            merged = run()
    with torch.inference_mode():
        inference = run().clone()
    return {"no_grad": plain, "merged": merged, "inference_mode": inference}


def _stop_on_one_rank(rank: int, teacher: Path, root: Path) -> None:
    """Rank 1 alone requests a stop after its first step; with log_every=3 every rank must
    checkpoint and stop at step 3 (the ranks agree at log steps only)."""
    from fewstep.distill.trainer import Trainer
    from fewstep.errors import TrainingInterrupted

    data = _cfg(teacher, root, "regression", iterations=6, log_every=3)
    tr = Trainer(validate(DistillConfig, data), root / "stop_mp", progress=False)
    if rank == 1:
        step_once = tr._iteration

        def stop_after_first() -> dict[str, torch.Tensor]:
            out = step_once()
            tr.request_stop("test stop on rank 1")
            return out

        tr._iteration = stop_after_first  # type: ignore[method-assign]
    try:
        tr.train()
        stopped = -1
    except TrainingInterrupted as e:
        stopped = e.step
    (root / f"stop_rank{rank}.json").write_text(json.dumps({"step": stopped}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _zimage_stack(tmp: Path) -> None:
    from fewstep.testing import build_tiny_zimage_pipeline

    build_tiny_zimage_pipeline(seed=0).save_pretrained(tmp / "zimage")
    (tmp / "prompts.txt").write_text("a red cat\na photo of a big blue dog\nthe green tree\n"
                                     "two birds\n")


@pytest.fixture(scope="module")
def runs(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("mp_runs")
    _zimage_stack(tmp)
    mp.spawn(_worker, args=(2, _free_port(), str(tiny_teacher), str(tmp)), nprocs=2, join=True)
    return tmp


def _losses(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert set(a) == set(b)
    # gradients are compared relative to the largest gradient (rounding noise scales with it;
    # some LoRA gradients are 1e-6 of the largest and carry only noise in their last digits)
    gmax = max((float(v.abs().max()) for k, v in b.items() if k.startswith("grad/")), default=0)
    for k in a:
        tol = atol * gmax if k.startswith("grad/") else atol
        torch.testing.assert_close(a[k], b[k], atol=tol, rtol=1e-4, msg=k)


ZIMAGE_RUNS = [f"zi_{p}_{m}" for p in ZIMAGE_PARAMS for m in ("ddp", "fsdp")]


@pytest.mark.parametrize("name", ["reg_ddp", "reg_fsdp", "turbo_ddp", *ZIMAGE_RUNS])
def test_ranks_stay_identical(runs: Path, name: str) -> None:
    r0 = load_file(str(runs / f"{name}_rank0.safetensors"))
    r1 = load_file(str(runs / f"{name}_rank1.safetensors"))
    assert set(r0) == set(r1) and any(k.startswith("method/") for k in r0) == (name == "turbo_ddp")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # bit-identical: student, EMA, discriminator heads


@pytest.mark.parametrize("name", ["reg_ddp", "reg_fsdp", *ZIMAGE_RUNS])
def test_regression_matches_one_process(runs: Path, tiny_teacher: Path, name: str) -> None:
    data = _scenarios(tiny_teacher, runs)[name]
    data["train"].pop("distributed", None)
    one = _train(data, runs / f"{name}_1p")
    # Z-Image: attention over captions padded per batch sums in another order when the batch
    # is split, and Adam turns those rounding differences into ~3e-5 weight differences
    atol = 1e-4 if name.startswith("zi_") else 1e-5
    _assert_close(load_file(str(runs / f"{name}_rank0.safetensors")), _full_state(one), atol)
    a, b = _losses(runs / f"{name}_mp"), _losses(runs / f"{name}_1p")
    assert [r["step"] for r in a] == list(range(1, data["train"]["iterations"] + 1))
    for ra, rb in zip(a, b, strict=True):
        assert ra["g_reg"] == pytest.approx(rb["g_reg"], rel=1e-4, abs=1e-6)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4, abs=1e-6)
    assert (runs / f"{name}_mp" / "student.safetensors").is_file()
    assert len(list((runs / f"{name}_mp" / "checkpoints").iterdir())) == 1


def test_turbo_pp_trains_in_two_processes(runs: Path) -> None:
    rows = _losses(runs / "turbo_ddp_mp")
    assert [r["step"] for r in rows] == list(range(1, ITERS + 1))
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in rows)
    assert {"g_adv", "d_loss", "g_step1"} <= set(rows[-1])


def test_resume_on_every_rank(runs: Path) -> None:
    full = load_file(str(runs / "reg_ddp_rank0.safetensors"))
    for r in (0, 1):
        _assert_close(load_file(str(runs / f"reg_resumed_rank{r}.safetensors")), full, 1e-6)
    assert [r["step"] for r in _losses(runs / "reg_half_mp")] == list(range(1, ITERS + 1))


def test_a_stop_on_one_rank_stops_every_rank_at_the_next_log_step(runs: Path) -> None:
    steps = [json.loads((runs / f"stop_rank{r}.json").read_text())["step"] for r in (0, 1)]
    assert steps == [3, 3]
    assert len(list((runs / "stop_mp" / "checkpoints").iterdir())) == 1  # the stop's own
    assert [r["step"] for r in _losses(runs / "stop_mp")] == [1, 2, 3]


def test_a_sharded_lora_student_samples_in_every_mode(runs: Path) -> None:
    for r in (0, 1):
        got = load_file(str(runs / f"sharded_samples_rank{r}.safetensors"))
        assert torch.equal(got["merged"], got["no_grad"])
        assert torch.equal(got["inference_mode"], got["no_grad"])
