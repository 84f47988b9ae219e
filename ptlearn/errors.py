"""User-facing errors: each names the file, line or key at fault and what to do about it."""

from collections.abc import Iterable


def did_you_mean(name: object, known: "Iterable[str]") -> str:
    """' (did you mean 'x'?)' for the closest of `known` to `name`, or ''. Names are shown
    with ascii(), so control characters or look-alike letters in data stay visible."""
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {ascii(close[0])}?)" if close else ""


class PtlearnError(Exception):
    """An error caused by the user's input (a file, a config key, a flag), not by a bug.

    Command-line entry points catch it and print its message as one line instead of a traceback.
    """


class CheckpointError(PtlearnError):
    """A model checkpoint that is missing, unreadable, unsafe or of an unsupported kind."""


class DataError(PtlearnError):
    """A data file (jsonl, raw data set) that is missing or malformed; names file and line."""


class TemplateError(PtlearnError):
    """A task template that is invalid for its task; names the task and the problem."""


class ConfigError(PtlearnError):
    """A config key with an invalid value; names the key."""


class TrainingError(PtlearnError):
    """A run that cannot go on (a non-finite loss, gradient or validation loss); names the step,
    the last good checkpoint and the keys most likely at fault."""


class WorkdirError(PtlearnError):
    """A workdir that cannot be written (read-only, full, removed under the run); says which
    checkpoint is safe to resume from."""
