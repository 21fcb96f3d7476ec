"""Run a distillation from a config file: the code behind ``fewstep distill`` and
``python -m fewstep.distill``.

:func:`run_distill` validates the config (YAML file <- ``dotted.key=value`` overrides), refuses
to start a fresh run in a folder that already holds checkpoints (``resume=True`` continues it
instead), and turns SIGTERM / SIGINT into "write a checkpoint at the next step boundary, then
raise :class:`~fewstep.errors.TrainingInterrupted`" (a second signal acts as usual).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from fewstep.app import validation
from fewstep.app.resources import check_distill_resources
from fewstep.distill.config import DistillConfig, drop_foreign_sections
from fewstep.distill.engine.state import list_checkpoints
from fewstep.distill.trainer import Trainer
from fewstep.errors import ConfigError, TrainingInterrupted
from fewstep.utils.config_files import apply_overrides, load_config, load_yaml, user_path, validate
from fewstep.utils.output_dirs import replaced_run_contents
from fewstep.utils.run_lock import RunLock

log = logging.getLogger(__name__)

__all__ = ["TrainingInterrupted", "default_run_dir", "load_distill_config", "run_distill",
           "stop_on_signals"]


def load_distill_config(config_path: str | Path | None, overrides: list[str] | None = None
                        ) -> DistillConfig:
    """The validated :class:`DistillConfig` (raises a one-line :class:`ConfigError`).

    A ``method=`` override switches the recipe of a file written for another one (e.g. a
    Turbo++ preset): the file's sections that only other methods read are dropped; sections
    set on the command line are kept (and refused if the method does not read them)."""
    ov = list(overrides or [])
    switch = [o for o in ov if o.startswith("method=")]
    if config_path is None or not switch:
        return load_config(DistillConfig, config_path, ov)
    data = drop_foreign_sections(apply_overrides(load_yaml(config_path), switch))
    return validate(DistillConfig, apply_overrides(data, [o for o in ov if o not in switch]),
                    str(config_path))


def default_run_dir(cfg: DistillConfig) -> Path:
    """``runs/<method>_<data>`` (relative to the working directory)."""
    return Path("runs") / f"{cfg.method}_{cfg.data}"


def _run_dir(out: str | Path | None, cfg: DistillConfig) -> Path:
    if out is None:
        out = default_run_dir(cfg)
    try:
        path = Path(user_path(str(out)))
    except ValueError as e:
        raise ConfigError(f"--out: {e}") from None
    validation.output_dir(path, "--out")
    validation.writable(path, is_dir=True)
    return path


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer,
                    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
                    ) -> Iterator[None]:
    """While active, the first of ``signals`` asks ``trainer`` to checkpoint and stop.

    Only installs handlers in the main thread (elsewhere it does nothing); the previous
    handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        trainer.request_stop(f"received {name}")
        signal.signal(signum, previous[signal.Signals(signum)])  # a second one acts as usual

    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_distill(config_path: str | Path | None, overrides: list[str] | None = None,
                out: str | Path | None = None, resume: bool = False, progress: bool = True,
                overwrite: bool = False) -> Trainer:
    """Validate the config, build the :class:`Trainer` and train; returns the trainer.

    With ``resume=True`` and no ``config_path``, the run's own ``config.yaml`` is used. A fresh
    run never replaces another run's files or a folder fewstep did not write: ``--out``
    must be new or empty unless ``overwrite`` (:func:`fewstep.utils.output_dirs.
    replaced_run_contents`). Sizes that cannot fit are refused before anything is allocated
    (:func:`fewstep.app.resources.check_distill_resources`).
    Raises :class:`~fewstep.errors.FewstepError` subclasses for user errors and
    :class:`TrainingInterrupted` after a SIGTERM / SIGINT (a checkpoint has been written).
    """
    if config_path is None and resume and out is not None:
        saved = Path(out).expanduser() / "config.yaml"
        if saved.is_file():
            config_path = saved
    cfg = load_distill_config(config_path, overrides)
    run_dir = _run_dir(out, cfg)
    with RunLock(run_dir):  # one run per folder (rank 0 holds it; released even on SIGKILL)
        has_ck = bool(list_checkpoints(run_dir / "checkpoints"))
        with replaced_run_contents(run_dir, resume, overwrite, has_ck):
            check_distill_resources(cfg)
            trainer = Trainer(cfg, run_dir, progress=progress, resume=resume)
            try:
                with stop_on_signals(trainer):
                    trainer.train()
            finally:
                trainer.dist.shutdown()  # leaves the process group (multi-process runs)
    return trainer
