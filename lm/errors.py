"""Errors that `lm/` raises on purpose. Each message names what is at fault and how to fix it."""


class ForjaError(Exception):
    """Base class: an error a user can act on (bad config, bad file), not a bug."""


class ConfigError(ForjaError, ValueError):
    """A configuration value is unknown or invalid; the message names the key."""


class DataError(ForjaError):
    """A token shard or token folder is missing, malformed or inconsistent; names the file."""


class CheckpointError(ForjaError):
    """A checkpoint is incomplete, corrupted or unsafe; names the file."""


class NonFiniteLossError(ForjaError, FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; the run stops before any bad checkpoint."""
