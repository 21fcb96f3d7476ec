"""``python -m fewstep.distill [OPTIONS] [key=value ...]`` is ``fewstep distill ...``: the same
typer command, options and exit codes (0 done, 2 user error as one line on stderr, 143 stopped
by SIGTERM / SIGINT after writing a checkpoint)."""

from __future__ import annotations

import sys

from fewstep.app.cli import run


def main(argv: list[str] | None = None) -> int:
    """Run ``fewstep distill`` with ``argv`` (default ``sys.argv[1:]``); the exit code."""
    return run(["distill", *(sys.argv[1:] if argv is None else argv)],
               prog_name="python -m fewstep")


if __name__ == "__main__":
    sys.exit(main())
