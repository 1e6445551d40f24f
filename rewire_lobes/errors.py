"""The one exception type that means "the user passed something wrong".

A recipe prints a :class:`UserError`'s message alone, on one line, and exits with status 2
(``rewire_lobes.runs.cli.user_errors``). Anything else is a bug and keeps its traceback.
Each subclass also derives from the built-in error it refines (``ValueError``,
``FileNotFoundError`` ...), so callers that catch those keep working.
"""


class UserError(Exception):
    """A wrong path, option value or run folder: the message says what to pass instead."""


class DataFolderError(UserError, FileNotFoundError):
    """The data folder is missing or lacks what the prepare step reads."""


class DataFileError(DataFolderError, ValueError):
    """A file of the data folder is there but holds what the prepare step cannot use
    (a missing column, a duplicated row, a label never seen in training)."""


class OptionError(UserError, ValueError):
    """An unknown or invalid command-line option."""
