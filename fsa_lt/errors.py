"""Errors that the command line turns into one line and a non-zero exit.

Every problem a user can cause (a bad config key, a missing data file, a corrupt
checkpoint, a class count that does not match) is raised as a subclass of
`FsaError` whose message names the problem and where it is.  The command line
prints ``fsa-lt: error: <message>`` and exits with `exit_code`.
"""


class FsaError(Exception):
    exit_code = 1


class ConfigError(FsaError):
    """A config file or override is wrong (unknown key, wrong type, bad value)."""

    exit_code = 2


class DataError(FsaError):
    """Data set files are missing or malformed."""

    exit_code = 3


class CheckpointError(FsaError):
    """A checkpoint is missing, truncated, foreign or does not fit the model."""

    exit_code = 4


class BusyError(FsaError):
    """Another live process is running the same phase of the same config and note."""

    exit_code = 5
