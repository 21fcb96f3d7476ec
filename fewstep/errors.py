"""Errors that the CLI reports as one line with exit code 2 (no traceback)."""


class FewstepError(Exception):
    """Base class: a problem with the user's input, not a bug."""


class ConfigError(FewstepError):
    """A config field is missing, unknown, of the wrong type or out of range."""


class CheckpointError(FewstepError):
    """A checkpoint or cache file is missing, truncated, corrupted or of the wrong shape."""


class DivergenceError(FewstepError):
    """A loss or gradient became NaN / Inf during training."""
