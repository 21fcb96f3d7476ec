"""Malformed inputs across every command: each must end in one line on stderr, no traceback.

``python -m benchmarks.bad_inputs [--workers 2] [--only PREFIX]`` builds a few fixture files
(binary / Latin-1 / UTF-16 configs, folders where files are expected, a garbage weights file,
a checkerboard student, a finished run, a run folder holding checkpoints, a run folder locked
by this process), then runs every case of :data:`CASES` as its own ``fewstep`` process (at most
``--workers`` at a time) and writes ``benchmarks/results/bad_inputs.json``:
``{"tried", "clean", "failures": [{"id", "argv", "rc", "stderr"}], "by_command", ...}``.

A case is clean when the process exits with the expected code -- 2 for bad input, 3 for a write
the operating system refused (:mod:`fewstep.errors`) -- prints exactly one line on stderr that
starts with ``error:`` and contains the case's expected text, and prints no traceback.

Write errors: this runs as root in CI, where ``chmod`` does not stop writes. Cases marked
``fault`` run the command under :func:`fewstep.testing.faults.refuse_writes` (a read-only or
permission-denied folder, ``EROFS`` / ``EACCES``) or :func:`~fewstep.testing.faults.disk_full`
(``ENOSPC`` when a file is fsynced; ``enospc_open``: when it is created) applied in the child
process; ``/sys`` paths give a real
``EPERM`` from the kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from fewstep.core.levels import student_sigmas
from fewstep.data.registry import shipped_teacher
from fewstep.student.student import Student
from fewstep.teachers.training import load_denoiser
from fewstep.utils.files import save_tensors
from fewstep.utils.run_lock import RunLock

#: the child process: apply the case's fault (if any), then run the ``fewstep`` CLI
CHILD = """
import errno, sys
from contextlib import nullcontext
from pathlib import Path
import torch
torch.set_num_threads(1)
fault, where, module = sys.argv[1], sys.argv[2], sys.argv[3]
sys.argv = [module, *sys.argv[4:]]
ctx = nullcontext()
if fault != "none":  # (fewstep.testing imports the tiny diffusers fixtures: slow)
    from fewstep.testing.faults import disk_full, refuse_writes
    ctx = {"erofs": refuse_writes(where), "eacces": refuse_writes(where, errno.EACCES),
           "enospc": disk_full(where), "enospc_open": refuse_writes(where, errno.ENOSPC)}[fault]
with ctx:
    if module == "fewstep.distill":
        from fewstep.distill.__main__ import main as distill_main
        sys.exit(distill_main(sys.argv[1:]))
    from fewstep.app.cli import main
    main()
"""

SYS = "/sys/fewstep_bad_inputs"  # the kernel refuses to create anything here (EPERM), even as root


@dataclass
class Case:
    """One malformed input: ``argv`` after the program name, with ``{placeholders}``."""

    id: str
    argv: list[str]
    rc: int = 2
    expect: str = ""
    fault: str = "none"  # none | erofs | eacces (below {ro}) | enospc | enospc_open ({full})
    module: str = "fewstep"  # or fewstep.distill (python -m fewstep.distill)
    tags: list[str] = field(default_factory=list)


def C(id: str, *argv: str, rc: int = 2, expect: str = "", fault: str = "none",
      module: str = "fewstep") -> Case:
    return Case(id, list(argv), rc, expect, fault, module)


TT = ("teacher", "train", "--quiet", "--out")
S = ("sample", "--data", "checkerboard", "--num", "10")
E = ("eval", "--data", "checkerboard", "--num", "10")
D = ("distill", "--quiet")
DQ = ("data=checkerboard", "train.iterations=1", "train.batch_size=8", "cache.size=16",
      "cache.shard_size=16", "cache.dir={T}/cache")
M = ("demo", "--quiet")
MQ = ("train.iterations=1", "eval.num_samples=10")
P = ("plan",)
X = ("export",)

CASES: list[Case] = [
    # ---- teacher train
    C("teacher/config-binary", *TT, "{T}/t.safetensors", "--config", "{bin}",
      expect="binary file"),
    C("teacher/config-latin1", *TT, "{T}/t.safetensors", "--config", "{latin}",
      expect="not UTF-8"),
    C("teacher/config-utf16", *TT, "{T}/t.safetensors", "--config", "{utf16}"),
    C("teacher/config-is-dir", *TT, "{T}/t.safetensors", "--config", "{dir}",
      expect="is a directory"),
    C("teacher/config-missing", *TT, "{T}/t.safetensors", "--config", "{T}/nope.yaml",
      expect="not found"),
    C("teacher/config-list", *TT, "{T}/t.safetensors", "--config", "{list}"),
    C("teacher/config-bad-yaml", *TT, "{T}/t.safetensors", "--config", "{badyaml}"),
    C("teacher/config-nested-deep", *TT, "{T}/t.safetensors", "--config", "{deep}"),
    C("teacher/override-blamed", *TT, "{T}/t.safetensors", "--config", "{teacher_yaml}",
      "lr=-1", expect="override 'lr=-1'"),
    C("teacher/out-is-dir", *TT, "{dir}", expect="is a directory"),
    C("teacher/out-below-file", *TT, "{file}/t.safetensors", expect="is a file"),
    C("teacher/out-not-safetensors", *TT, "{T}/t.pt", expect=".safetensors"),
    C("teacher/seed-negative", *TT, "{T}/t.safetensors", "seed=-1", expect="seed"),
    C("teacher/seed-huge", *TT, "{T}/t.safetensors", "seed=99999999999999999999",
      expect="seed"),
    C("teacher/seed-float", *TT, "{T}/t.safetensors", "seed=1.5", expect="seed"),
    C("teacher/device-unknown", *TT, "{T}/t.safetensors", "device=tpu", expect="device"),
    C("teacher/device-cuda", *TT, "{T}/t.safetensors", "device=cuda", expect="device"),
    C("teacher/steps-zero", *TT, "{T}/t.safetensors", "steps=0", expect="steps"),
    C("teacher/batch-zero", *TT, "{T}/t.safetensors", "batch_size=0", expect="batch_size"),
    C("teacher/lr-nan", *TT, "{T}/t.safetensors", "lr=.nan", expect="lr"),
    C("teacher/data-unknown", *TT, "{T}/t.safetensors", "data=cifar", expect="data"),
    C("teacher/unknown-key", *TT, "{T}/t.safetensors", "epochs=3", expect="epochs"),
    C("teacher/override-no-equals", *TT, "{T}/t.safetensors", "steps", expect="steps"),
    C("teacher/sampling-steps-zero", *TT, "{T}/t.safetensors", "sampling.steps=0"),
    C("teacher/missing-out", "teacher", "train", "--quiet", expect="--out"),
    C("teacher/out-sys", *TT, SYS + "/t.safetensors", rc=3),
    C("teacher/out-readonly", *TT, "{ro}/t.safetensors", rc=3, fault="erofs",
      expect="Read-only file system"),
    C("teacher/out-permission", *TT, "{ro}/t.safetensors", rc=3, fault="eacces",
      expect="Permission denied"),
    # ---- classifier train
    C("classifier/out-is-dir", "classifier", "train", "--out", "{dir}",
      expect="is a directory"),
    C("classifier/out-below-file", "classifier", "train", "--out", "{file}/c.safetensors"),
    C("classifier/out-not-safetensors", "classifier", "train", "--out", "{T}/c.bin"),
    C("classifier/seed-negative", "classifier", "train", "--out", "{T}/c.safetensors",
      "--seed", "-1", expect="--seed"),
    C("classifier/seed-huge", "classifier", "train", "--out", "{T}/c.safetensors",
      "--seed", "99999999999", expect="--seed"),
    C("classifier/seed-text", "classifier", "train", "--out", "{T}/c.safetensors",
      "--seed", "abc", expect="--seed"),
    C("classifier/unknown-option", "classifier", "train", "--bogus", expect="--bogus"),
    C("classifier/out-sys", "classifier", "train", "--out", SYS + "/c.safetensors", rc=3),
    C("classifier/out-readonly", "classifier", "train", "--out", "{ro}/c.safetensors",
      rc=3, fault="erofs"),
    # ---- sample
    C("sample/out-is-file", *S, "--out", "{file}", expect="existing file"),
    C("sample/out-below-file", *S, "--out", "{file}/sub", expect="is a file"),
    C("sample/sampler-unknown", *S, "--out", "{T}/s", "--samplers", "foo_3",
      expect="--samplers"),
    C("sample/sampler-zero-steps", *S, "--out", "{T}/s", "--samplers", "teacher_0",
      expect="--samplers"),
    C("sample/sampler-overflow", *S, "--out", "{T}/s", "--samplers",
      "teacher_99999999999999999999", expect="--samplers"),
    C("sample/sampler-too-many-steps", *S, "--out", "{T}/s", "--samplers", "teacher_100000",
      expect="--samplers"),
    C("sample/sampler-empty", *S, "--out", "{T}/s", "--samplers", ",", expect="--samplers"),
    C("sample/num-zero", "sample", "--data", "checkerboard", "--out", "{T}/s", "--num", "0",
      expect="--num"),
    C("sample/num-negative", "sample", "--data", "checkerboard", "--out", "{T}/s", "--num",
      "-4", expect="--num"),
    C("sample/num-huge", "sample", "--data", "checkerboard", "--out", "{T}/s", "--num",
      "10000000000", expect="--num"),
    C("sample/num-text", "sample", "--data", "checkerboard", "--out", "{T}/s", "--num",
      "many", expect="--num"),
    C("sample/seed-negative", *S, "--out", "{T}/s", "--seed", "-5", expect="--seed"),
    C("sample/seed-huge", *S, "--out", "{T}/s", "--seed", "18446744073709551616",
      expect="--seed"),
    C("sample/device-unknown", *S, "--out", "{T}/s", "--device", "tpu", expect="--device"),
    C("sample/device-cuda", *S, "--out", "{T}/s", "--device", "cuda", expect="--device"),
    C("sample/device-cuda-index", *S, "--out", "{T}/s", "--device", "cuda:3",
      expect="--device"),
    C("sample/device-cpu-index", *S, "--out", "{T}/s", "--device", "cpu:7",
      expect="--device"),
    C("sample/teacher-is-dir", *S, "--out", "{T}/s", "--teacher", "{dir}",
      expect="is a directory"),
    C("sample/teacher-missing", *S, "--out", "{T}/s", "--teacher", "{T}/no.safetensors",
      expect="--teacher"),
    C("sample/teacher-garbage", *S, "--out", "{T}/s", "--teacher", "{garbage}",
      expect="--teacher"),
    C("sample/teacher-is-yaml", *S, "--out", "{T}/s", "--teacher", "{teacher_yaml}",
      expect="--teacher"),
    C("sample/teacher-is-student", *S, "--out", "{T}/s", "--teacher", "{ckS}",
      expect="--teacher"),
    C("sample/teacher-other-data", "sample", "--out", "{T}/s", "--num", "10", "--teacher",
      "{ckT}", "--data", "digits", expect="--teacher"),
    C("sample/digits-teacher-toy-data", "sample", "--out", "{T}/s", "--num", "10",
      "--teacher", "{dgT}", "--data", "moons", expect="--teacher"),
    C("sample/student-garbage", "sample", "--out", "{T}/s", "--num", "10", "--student",
      "{garbage}", expect="--student"),
    C("sample/student-is-teacher", "sample", "--out", "{T}/s", "--num", "10", "--student",
      "{ckT}", expect="--student"),
    C("sample/student-other-data", "sample", "--out", "{T}/s", "--num", "10", "--student",
      "{ckS}", "--data", "digits", expect="--student"),
    C("sample/student-teacher-mismatch", "sample", "--out", "{T}/s", "--num", "10",
      "--student", "{ckS}", "--teacher", "{dgT}", "--samplers", "student_2,teacher_4",
      expect="--teacher"),
    C("sample/student-too-few-steps", "sample", "--out", "{T}/s", "--num", "10", "--student",
      "{ckS}", "--samplers", "student_5", expect="student_5"),
    C("sample/student-sampler-without-student", *S, "--out", "{T}/s", "--samplers",
      "student_2", expect="student"),
    C("sample/student-empty-folder", "sample", "--out", "{T}/s", "--num", "2", "--student",
      "{dir}", expect="--student"),
    C("sample/data-unknown", "sample", "--out", "{T}/s", "--data", "mnist", expect="--data"),
    C("sample/prompt-without-student", *S, "--out", "{T}/s", "--prompt", "a cat",
      expect="--prompt"),
    C("sample/missing-out", *S, expect="--out"),
    C("sample/out-sys", *S, "--out", SYS + "/s", rc=3),
    C("sample/out-readonly", *S, "--out", "{ro}/s", rc=3, fault="erofs",
      expect="Read-only file system"),
    C("sample/out-permission", *S, "--out", "{ro}/s", rc=3, fault="eacces",
      expect="Permission denied"),
    C("sample/out-disk-full", *S, "--out", "{full}/s", rc=3, fault="enospc",
      expect="No space left"),
    # ---- eval
    C("eval/out-is-dir", *E, "--out", "{dir}", expect="is a directory"),
    C("eval/out-below-file", *E, "--out", "{file}/m.json", expect="is a file"),
    C("eval/sampler-unknown", *E, "--samplers", "euler_4", expect="--samplers"),
    C("eval/sampler-overflow", *E, "--samplers", "teacher_123456789012345678901234567890",
      expect="--samplers"),
    C("eval/num-too-small", "eval", "--data", "checkerboard", "--num", "9", expect="--num"),
    C("eval/num-huge", "eval", "--data", "checkerboard", "--num", "99999999999",
      expect="--num"),
    C("eval/seed-negative", *E, "--seed", "-1", expect="--seed"),
    C("eval/seed-huge", *E, "--seed", "4294967296", expect="--seed"),
    C("eval/device-unknown", *E, "--device", "gpu", expect="--device"),
    C("eval/device-cuda", *E, "--device", "cuda", expect="--device"),
    C("eval/device-mps", *E, "--device", "mps", expect="--device"),
    C("eval/teacher-is-dir", *E, "--teacher", "{dir}", expect="is a directory"),
    C("eval/teacher-garbage", *E, "--teacher", "{garbage}", expect="--teacher"),
    C("eval/teacher-other-data", "eval", "--num", "10", "--teacher", "{ckT}", "--data",
      "digits", expect="--teacher"),
    C("eval/student-other-data", "eval", "--num", "10", "--student", "{ckS}", "--data",
      "moons", expect="--student"),
    C("eval/student-teacher-mismatch", "eval", "--num", "10", "--student", "{ckS}",
      "--teacher", "{dgT}", "--samplers", "student_2", expect="--teacher"),
    C("eval/student-too-few-steps", "eval", "--num", "10", "--student", "{ckS}",
      "--samplers", "student_3", expect="student_3"),
    C("eval/student-is-dir", "eval", "--num", "10", "--student", "{dir}",
      expect="is a directory"),
    C("eval/data-unknown", "eval", "--data", "cifar10", expect="--data"),
    C("eval/out-sys", *E, "--out", SYS + "/m.json", rc=3),
    C("eval/out-readonly", *E, "--out", "{ro}/m.json", rc=3, fault="erofs",
      expect="Read-only file system"),
    C("eval/out-disk-full", *E, "--out", "{full}/m.json", rc=3, fault="enospc",
      expect="No space left"),
    # ---- distill (fewstep distill and python -m fewstep.distill)
    C("distill/config-binary", *D, "--config", "{bin}", expect="binary file"),
    C("distill/config-latin1", *D, "--config", "{latin}", expect="not UTF-8"),
    C("distill/config-utf16", *D, "--config", "{utf16}"),
    C("distill/config-is-dir", *D, "--config", "{dir}", expect="is a directory"),
    C("distill/config-missing", *D, "--config", "{T}/none.yaml", expect="not found"),
    C("distill/config-bad-yaml", *D, "--config", "{badyaml}", expect="YAML"),
    C("distill/out-is-file", *D, "--out", "{file}", *DQ, expect="--out"),
    C("distill/out-below-file", *D, "--out", "{file}/run", *DQ, expect="--out"),
    C("distill/seed-negative", *D, "--out", "{T}/r", *DQ, "train.seed=-1",
      expect="train.seed"),
    C("distill/seed-huge", *D, "--out", "{T}/r", *DQ, "train.seed=99999999999",
      expect="train.seed"),
    C("distill/eval-seed-negative", *D, "--out", "{T}/r", *DQ, "eval.seed=-3",
      expect="eval.seed"),
    C("distill/device-cuda", *D, "--out", "{T}/r", *DQ, "train.device=cuda",
      expect="train.device"),
    C("distill/device-unknown", *D, "--out", "{T}/r", *DQ, "train.device=tpu",
      expect="train.device"),
    C("distill/gan-layer-out-of-range", *D, "--out", "{T}/r", *DQ, "gan.layers=[99]",
      expect="gan.layers"),
    C("distill/gan-layer-negative-out-of-range", *D, "--out", "{T}/r", *DQ,
      "gan.layers=[-1,-99]", expect="gan.layers"),
    C("distill/gan-layers-empty", *D, "--out", "{T}/r", *DQ, "gan.layers=[]",
      expect="gan.layers"),
    C("distill/preset-and-config", *D, "--preset", "demo", "--config", "{teacher_yaml}",
      expect="--config"),
    C("distill/preset-unknown", *D, "--preset", "no_such_preset", expect="preset"),
    C("distill/override-blamed", *D, "--preset", "demo", "--out", "{T}/r", "train.lr=-1",
      expect="override 'train.lr=-1'"),
    C("distill/run-locked", *D, "--out", "{locked}", *DQ, expect="in use by another run"),
    C("distill/run-has-checkpoints", *D, "--out", "{ckrun}", *DQ,
      expect="already holds checkpoints"),
    C("distill/num-steps-zero", *D, "--out", "{T}/r", *DQ, "student.num_steps=0",
      expect="student.num_steps"),
    C("distill/cache-dir-is-file", *D, "--out", "{T}/r", *DQ, "cache.dir={file}",
      expect="cache.dir"),
    C("distill/teacher-path-is-dir", *D, "--out", "{T}/r", *DQ, "teacher.path={dirst}",
      expect="is a directory"),
    C("distill/teacher-path-garbage", *D, "--out", "{T}/r", *DQ, "teacher.path={garbage}",
      expect="teacher.path"),
    C("distill/teacher-path-other-data", *D, "--out", "{T}/r", *DQ, "teacher.path={dgT}",
      expect="teacher.path"),
    C("distill/batch-zero", *D, "--out", "{T}/r", *DQ, "train.batch_size=0",
      expect="train.batch_size"),
    C("distill/eval-samples-few", *D, "--out", "{T}/r", *DQ, "eval.num_samples=5",
      expect="eval.num_samples"),
    C("distill/seed-float", *D, "--out", "{T}/r", *DQ, "train.seed=0.5", expect="train.seed"),
    C("distill/sigmas-not-decreasing", *D, "--out", "{T}/r", *DQ,
      "student.sigmas=[1.0,1.0]", expect="student.sigmas"),
    C("distill/out-sys", *D, "--out", SYS + "/r", *DQ, rc=3),
    C("distill/out-readonly", *D, "--out", "{ro}/r", *DQ, rc=3, fault="erofs",
      expect="Read-only file system"),
    C("distill/module-config-binary", "--config", "{bin}", module="fewstep.distill",
      expect="binary file"),
    C("distill/module-config-latin1", "--config", "{latin}", module="fewstep.distill",
      expect="not UTF-8"),
    C("distill/module-run-locked", "--out", "{locked}", *DQ, module="fewstep.distill",
      expect="in use by another run"),
    C("distill/module-seed-huge", "--out", "{T}/r", *DQ, "train.seed=18446744073709551616",
      module="fewstep.distill", expect="train.seed"),
    C("distill/module-out-readonly", "--out", "{ro}/r", *DQ, module="fewstep.distill", rc=3,
      fault="erofs"),
    # ---- demo
    C("demo/out-is-file", *M, "--out", "{file}", *MQ, expect="--out"),
    C("demo/out-below-file", *M, "--out", "{file}/d", *MQ, expect="--out"),
    C("demo/seed-negative", *M, "--out", "{T}/d", *MQ, "train.seed=-1", expect="train.seed"),
    C("demo/seed-huge", *M, "--out", "{T}/d", *MQ, "train.seed=4294967296",
      expect="train.seed"),
    C("demo/device-cuda", *M, "--out", "{T}/d", *MQ, "train.device=cuda",
      expect="train.device"),
    C("demo/gan-layer-out-of-range", *M, "--out", "{T}/d", *MQ, "gan.layers=[42]",
      expect="gan.layers"),
    C("demo/override-blamed", *M, "--out", "{T}/d", *MQ, "train.lr=0",
      expect="override 'train.lr=0'"),
    C("demo/unknown-key", *M, "--out", "{T}/d", *MQ, "train.epochs=3",
      expect="train.epochs"),
    C("demo/eval-samples-few", *M, "--out", "{T}/d", "train.iterations=1",
      "eval.num_samples=3", expect="eval.num_samples"),
    C("demo/override-bad-yaml", *M, "--out", "{T}/d", "train.betas=[0.9,", expect="override"),
    C("demo/out-sys", *M, "--out", SYS + "/d", *MQ, rc=3),
    C("demo/out-readonly", *M, "--out", "{ro}/d", *MQ, rc=3, fault="erofs"),
    # ---- plan
    C("plan/config-binary", *P, "--config", "{bin}", expect="binary file"),
    C("plan/config-latin1", *P, "--config", "{latin}", expect="not UTF-8"),
    C("plan/config-is-dir", *P, "--config", "{dir}", expect="is a directory"),
    C("plan/gpus-zero", *P, "--gpus", "0", expect="--gpus"),
    C("plan/gpus-negative", *P, "--gpus", "-2", expect="--gpus"),
    C("plan/gpus-text", *P, "--gpus", "two", expect="--gpus"),
    C("plan/memory-negative", *P, "--gpu-memory-gb", "-1", expect="--gpu-memory-gb"),
    C("plan/memory-nan", *P, "--gpu-memory-gb", "nan", expect="--gpu-memory-gb"),
    C("plan/memory-inf", *P, "--gpu-memory-gb", "inf", expect="--gpu-memory-gb"),
    C("plan/memory-zero", *P, "--gpu-memory-gb", "0", expect="--gpu-memory-gb"),
    C("plan/memory-text", *P, "--gpu-memory-gb", "lots", expect="--gpu-memory-gb"),
    C("plan/unknown-key", *P, "train.foo=1", expect="train.foo"),
    C("plan/override-blamed", *P, "--config", "{distill_yaml}", "train.batch_size=0",
      expect="override 'train.batch_size=0'"),
    C("plan/batch-indivisible", *P, "--gpus", "3", "train.batch_size=128",
      expect="train.batch_size"),
    C("plan/seed-huge", *P, "train.seed=99999999999", expect="train.seed"),
    C("plan/gan-layer-out-of-range", *P, "gan.layers=[99]", expect="gan.layers"),
    C("plan/device-unknown", *P, "train.device=tpu", expect="train.device"),
    # ---- export
    C("export/run-missing", *X, "--run", "{T}/no_run", "--out", "{T}/x", expect="--run"),
    C("export/run-is-file", *X, "--run", "{file}", "--out", "{T}/x", expect="--run"),
    C("export/run-empty-dir", *X, "--run", "{dir}", "--out", "{T}/x", expect="--run"),
    C("export/out-is-file", *X, "--run", "{run}", "--out", "{file}", expect="--out"),
    C("export/out-below-file", *X, "--run", "{run}", "--out", "{file}/x", expect="--out"),
    C("export/components-bad", *X, "--run", "{run}", "--out", "{T}/x", "--components",
      "link", expect="--components"),
    C("export/device-unknown", *X, "--run", "{run}", "--out", "{T}/x", "--device", "tpu",
      expect="--device"),
    C("export/device-cuda", *X, "--run", "{run}", "--out", "{T}/x", "--device", "cuda",
      expect="--device"),
    C("export/run-config-latin1", *X, "--run", "{badrun}", "--out", "{T}/x",
      expect="not UTF-8"),
    C("export/run-student-garbage", *X, "--run", "{garbagerun}", "--out", "{T}/x",
      expect="student.safetensors"),
    C("export/missing-run", *X, "--out", "{T}/x", expect="--run"),
    C("export/out-sys", *X, "--run", "{run}", "--out", SYS + "/x", rc=3),
    C("export/out-readonly", *X, "--run", "{run}", "--out", "{ro}/x", rc=3, fault="erofs",
      expect="Read-only file system"),
    # export writes its weights with safetensors' own (Rust) writer, which no Python-level
    # fsync patch reaches: the full disk answers when the files are created instead
    C("export/out-disk-full", *X, "--run", "{run}", "--out", "{full}/x", rc=3,
      fault="enospc_open", expect="No space left"),
    # ---- the command line itself
    C("cli/unknown-command", "distil", expect="distil"),
    C("cli/unknown-subcommand", "teacher", "fit", expect="fit"),
]


def _student_config(teacher_cfg: dict[str, Any], sigmas: torch.Tensor) -> dict[str, Any]:
    spec = {"num_steps": 2, "parameterization": "decoupled", "transition": "fresh",
            "sigmas": None, "lora_rank": 16, "lora_alpha": None, "lora_targets": None}
    return {"denoiser": teacher_cfg, "student": spec, "sigmas": [float(s) for s in sigmas],
            "method": "turbo_pp", "data": "checkerboard"}


def make_fixtures(root: Path) -> dict[str, str]:
    """Files the cases refer to, as ``{placeholder: path}`` (``{T}`` is replaced by a fresh
    folder per case)."""
    f: dict[str, Path] = {"T": root}
    f["bin"] = root / "binary.yaml"
    f["bin"].write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00train:\x00\xff\xfe")
    f["latin"] = root / "latin1.yaml"
    f["latin"].write_bytes("data: checkerboard\n# caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    f["utf16"] = root / "utf16.yaml"
    f["utf16"].write_bytes("data: checkerboard\n".encode("utf-16"))
    f["dir"] = root / "a_folder"
    f["dir"].mkdir()
    f["dirst"] = root / "folder.safetensors"
    f["dirst"].mkdir()
    f["file"] = root / "a_file.txt"
    f["file"].write_text("just text\n")
    f["list"] = root / "list.yaml"
    f["list"].write_text("- a\n- b\n")
    f["badyaml"] = root / "bad.yaml"
    f["badyaml"].write_text("train: {lr: [\n")
    f["deep"] = root / "deep.yaml"
    f["deep"].write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    f["teacher_yaml"] = root / "teacher.yaml"
    f["teacher_yaml"].write_text("data: checkerboard\nsteps: 10\n")
    f["distill_yaml"] = root / "distill.yaml"
    f["distill_yaml"].write_text("data: checkerboard\ntrain:\n  iterations: 1\n")
    f["garbage"] = root / "garbage.safetensors"
    f["garbage"].write_bytes(b"\x00\x01 this is not a safetensors file" * 10)
    f["ckT"], f["dgT"] = shipped_teacher("checkerboard"), shipped_teacher("digits")
    den, tcfg = load_denoiser(f["ckT"])
    sig = student_sigmas(2, 8, float(tcfg.get("sampling", {}).get("shift", 1.0)))
    student = Student(den, sig, "decoupled", "fresh")
    f["ckS"] = root / "student_checkerboard.safetensors"
    save_tensors(f["ckS"], student.state_dict(), "student", _student_config(tcfg, sig))
    run_cfg = {"data": "checkerboard", "method": "turbo_pp", "cache": {"dir": str(root / "c")}}
    f["run"] = root / "finished_run"
    f["run"].mkdir()
    (f["run"] / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    save_tensors(f["run"] / "student.safetensors", student.state_dict(), "student",
                 _student_config(tcfg, sig))
    f["badrun"] = root / "run_latin1_config"
    f["badrun"].mkdir()
    (f["badrun"] / "config.yaml").write_bytes(b"data: checkerboard # \xe9\xe8\n")
    save_tensors(f["badrun"] / "student.safetensors", student.state_dict(), "student",
                 _student_config(tcfg, sig))
    f["garbagerun"] = root / "run_garbage_student"
    f["garbagerun"].mkdir()
    (f["garbagerun"] / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    (f["garbagerun"] / "student.safetensors").write_bytes(b"garbage" * 20)
    f["ckrun"] = root / "run_with_checkpoints"
    (f["ckrun"] / "checkpoints").mkdir(parents=True)
    (f["ckrun"] / "checkpoints" / "ckpt_00000005.safetensors").write_bytes(b"x")
    f["locked"] = root / "run_locked"
    f["ro"] = root / "read_only"
    f["ro"].mkdir()
    f["full"] = root / "full_disk"
    f["full"].mkdir()
    return {k: str(v) for k, v in f.items()}


def _fill(s: str, fx: dict[str, str]) -> str:
    for k, v in fx.items():
        s = s.replace("{" + k + "}", v)
    return s


def run_case(case: Case, fx: dict[str, str], timeout: float) -> dict[str, Any]:
    # {T} is a fresh folder per case (outputs of one case never meet another's)
    own = Path(fx["T"]) / "cases" / case.id.replace("/", "__")
    own.mkdir(parents=True)
    argv = [_fill(a, {**fx, "T": str(own)}) for a in case.argv]
    where = fx["ro"] if case.fault in ("erofs", "eacces") else fx["full"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               COLUMNS="100")
    cmd = [sys.executable, "-c", CHILD, case.fault, where, case.module, *argv]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                             cwd=own)
        rc, out, err = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, str(e.stdout or ""), f"timed out after {timeout:.0f} s"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    problems = []
    if rc != case.rc:
        problems.append(f"exit code {rc}, expected {case.rc}")
    if "Traceback" in err or "Traceback" in out:
        problems.append("traceback")
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    elif not lines[0].startswith("error: "):
        problems.append("stderr does not start with 'error: '")
    elif case.expect and case.expect not in lines[0]:
        problems.append(f"message lacks {case.expect!r}")
    status = "clean" if not problems else "NOT CLEAN: " + "; ".join(problems)
    print(f"{case.id}: {status}" + ("" if not problems else f"\n    {err.strip()[-400:]}"),
          flush=True)
    return {"id": case.id, "argv": [case.module, *argv], "fault": case.fault, "rc": rc,
            "clean": not problems, "problems": problems, "stderr": err[-2000:],
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="cases run in parallel (max 2)")
    ap.add_argument("--only", default="", help="run only cases whose id starts with this")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bad_inputs.json"))
    args = ap.parse_args(argv)
    cases = [c for c in CASES if c.id.startswith(args.only)]
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fewstep_bad_inputs_") as tmp:
        fx = make_fixtures(Path(tmp))
        # this process holds {locked} meanwhile
        with RunLock(fx["locked"], enabled=True), \
                ThreadPoolExecutor(max(1, min(2, args.workers))) as pool:
            results = list(pool.map(lambda c: run_case(c, fx, args.timeout), cases))
    by_cmd: dict[str, dict[str, int]] = {}
    for r in results:
        d = by_cmd.setdefault(r["id"].split("/")[0], {"tried": 0, "clean": 0})
        d["tried"] += 1
        d["clean"] += int(r["clean"])
    failures = [{k: r[k] for k in ("id", "argv", "fault", "rc", "problems", "stderr")}
                for r in results if not r["clean"]]
    summary = {"command": "python -m benchmarks.bad_inputs" + (f" --only {args.only}"
                                                               if args.only else ""),
               "tried": len(results), "clean": sum(r["clean"] for r in results),
               "by_command": by_cmd, "seconds": round(time.perf_counter() - t0, 1),
               "failures": failures,
               "cases": [{k: r[k] for k in ("id", "rc", "clean", "seconds")} for r in results]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{summary['clean']} / {summary['tried']} clean ({summary['seconds']:.0f} s); "
          f"wrote {args.out}")
    for f in failures:
        print(f"  {f['id']}: {'; '.join(f['problems'])}: {f['stderr'].strip()[-300:]}")
    return 0 if summary["clean"] == summary["tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
