"""``python -m fewstep.distill --config FILE [--out RUN_DIR] [--resume] [key=value ...]``.

A thin wrapper over :func:`fewstep.distill.run.run_distill` (the ``fewstep distill`` command
does the same). Exit codes: 0 done, 2 user error (one line on stderr), 3 a write the
operating system refused (one line), 143 stopped by SIGTERM / SIGINT after writing a
checkpoint (see :mod:`fewstep.errors`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import NoReturn

from fewstep.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, error_exit


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        self.exit(EXIT_USER_ERROR, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m fewstep.distill",
                description="Distill a teacher into a few-step student.")
    p.add_argument("--config", help="YAML DistillConfig")
    p.add_argument("--out", help="run directory (default: runs/<method>_<data>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest good checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error (already printed as one line)
        return int(e.code or 0)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s")
    from fewstep.distill.run import TrainingInterrupted, run_distill

    try:
        trainer = run_distill(args.config, args.overrides, args.out, args.resume,
                              progress=not args.quiet)
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # user errors (2) and refused writes (3): one line, no traceback
        mapped = error_exit(e)
        if mapped is None:
            raise
        print(mapped[1], file=sys.stderr)
        return mapped[0]
    if trainer.dist.is_main:
        print(json.dumps({"out": str(trainer.run_dir), "step": trainer.step,
                          "seconds": round(getattr(trainer, "seconds", 0.0), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
