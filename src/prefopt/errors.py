"""Errors a user can fix: their message is one line naming the problem and the fix.

`python -m prefopt.train` prints a `PrefoptError` as that one line on stderr and exits with
status 2, without a traceback; any other exception is a bug and keeps its traceback.
`PrefoptError` subclasses `ValueError`, so callers that catch `ValueError` keep working.
"""

from __future__ import annotations


class PrefoptError(ValueError):
    """A problem with the user's config, data or environment, with its fix in the message."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # one line, whatever was passed


class RowError(PrefoptError):
    """One bad input row: which one, which field, what is wrong (`reason` groups the counts)."""

    def __init__(self, message: str, *, reason: str, field: str | None = None):
        """`message` starts with where the row is (file and line); `reason` is a short key
        (`missing_column`, `wrong_type`, `empty`, ...) under which skipped rows are counted."""
        super().__init__(message)
        self.reason, self.field = reason, field


EXIT_USER_ERROR = 2
