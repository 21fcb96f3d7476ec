"""Session fixtures of the command-line tests (defined in :mod:`cli_helpers`)."""

from cli_helpers import run_a, run_b, teacher_a, teacher_b, unet_run, work  # noqa: F401
