"""Errors that reach the user as one plain sentence.

Anything raised as a ``UserError`` is the user's to fix (a bad file, a wrong column, an unknown config
key). The CLI prints its message on one line and exits with code 2; the app shows it with ``st.error``.
Any other exception is a bug in this project and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, with a message that says what is wrong and how to fix it."""

    exit_code = 2


class DataError(UserError):
    """An AnnData file or its contents cannot be used as given."""


class ConfigError(UserError):
    """A configuration key or value is unknown, of the wrong type, or out of range."""


class CheckpointError(UserError):
    """A checkpoint is missing, is not a checkpoint of this project, or does not fit the data."""


class RunFolderError(UserError):
    """The runs folder cannot be written (disk full, read-only, no permission) or a run is missing."""
