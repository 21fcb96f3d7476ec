"""Robustness suites, each ``python -m benchmarks.robustness.<name>``: ``bad_inputs`` (malformed
inputs: one line, the right exit code), ``kill_resume`` (SIGKILL + resume is bit-identical),
``nothing_lost`` (killed writers never lose or mix outputs)."""
