"""One error type for everything a user can fix: bad files, bad config, bad requests.

The CLI prints `UserseqError` messages without a traceback and exits with code 2; any other
exception is a bug in userseq and keeps its traceback.
"""


class UserseqError(Exception):
    """A problem with the user's input, with a message that says where and what to do."""


class DataError(UserseqError):
    """Bad or unusable event data (file, column, row)."""


class ConfigError(UserseqError):
    """Bad configuration key or value."""


class ArtifactError(UserseqError):
    """Missing, corrupt or incompatible run directory / checkpoint."""


class NotFittedError(UserseqError, ValueError, AttributeError):
    """An estimator was used before `fit` or `load` (also a ValueError/AttributeError, like
    scikit-learn's, so generic code that catches those keeps working)."""


class UserseqWarning(UserWarning):
    """Something in the input that is probably a mistake but not certainly one (ids with blanks
    around them, timestamps in two units): the CLI prints it as one `warning:` line; the data
    report (`userseq validate`) lists it under problems."""
