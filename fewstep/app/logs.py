"""What the command line logs: fewstep's own messages on stderr, other libraries kept quiet.

A problem is reported as one ``error:`` line; warnings of third-party libraries (retries of an
unreachable Hugging Face hub, deprecations) and Python ``warnings`` would bury it, so they are
routed to logging and kept at ERROR unless ``FEWSTEP_LIBRARY_LOGS=1`` is set.
"""

from __future__ import annotations

import logging
import os

#: libraries whose warnings (retries of an unreachable hub, deprecations) would bury the
#: one error line: shown only when fewstep's own log level is below WARNING
#: (``FEWSTEP_LIBRARY_LOGS=1`` shows them always)
QUIET_LIBRARIES = ("huggingface_hub", "diffusers", "transformers", "urllib3", "filelock",
                   "py.warnings")


def configure_logging(quiet: bool = False) -> None:
    """Messages of the ``fewstep`` loggers on stderr: info and up (warnings with ``quiet``).
    Python warnings and third-party library warnings are routed to logging and kept at
    ERROR, so a problem is one line (set ``FEWSTEP_LIBRARY_LOGS=1`` to see them)."""
    if not os.environ.get("FEWSTEP_LIBRARY_LOGS"):
        logging.captureWarnings(True)
        for name in QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.ERROR)
        for var in ("HF_HUB_VERBOSITY", "DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
            os.environ.setdefault(var, "error")  # read when those libraries set up logging
    logger = logging.getLogger("fewstep")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(getattr(h, "_fewstep", False) for h in logger.handlers):
        h = logging.StreamHandler()  # stderr, looked up at emit time (works under capture)
        h.setFormatter(logging.Formatter("%(message)s"))
        h._fewstep = True  # type: ignore[attr-defined]
        logger.addHandler(h)


__all__ = ["QUIET_LIBRARIES", "configure_logging"]
