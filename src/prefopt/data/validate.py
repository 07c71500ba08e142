"""What happens to a bad input row: `data.on_invalid`.

- `error` (the default): the first bad row stops the run before training, with the file, the
  row, the field and what to do;
- `skip`: bad rows are dropped and counted per reason (`missing_column`, `wrong_type`, `empty`,
  `bad_label`, `identical`, `too_long`, `truncated_identical`, `untokenizable`); the counts are
  logged with the first example of each reason and recorded in MLflow as `dropped_<reason>` in
  the profile of the run's dataset of that split.

Problems with a whole file or dataset (unreadable, truncated, no usable layout, nothing left
after filtering) always stop the run: skipping cannot fix those.
"""

from __future__ import annotations

import logging
from collections import Counter

from prefopt.errors import PrefoptError, RowError

log = logging.getLogger("prefopt.data")

ON_INVALID = ("error", "skip")
SKIP_HINT = "fix the row, or drop every such row with data.on_invalid=skip"


class InvalidRows:
    """Collects the bad rows of one split under one `data.on_invalid` policy."""

    def __init__(self, mode: str, split: str = "train"):
        if mode not in ON_INVALID:
            raise PrefoptError(f"data.on_invalid={mode!r}: choose one of {', '.join(ON_INVALID)}")
        self.mode = mode
        self.split = split
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}
        """Per reason, the message of the first row dropped for it."""

    @property
    def skipping(self) -> bool:
        return self.mode == "skip"

    def record(self, error: RowError) -> None:
        """Raise (error mode, with the hint how to skip) or count the row (skip mode)."""
        if not self.skipping:
            message = str(error)
            if "on_invalid" not in message:
                message = f"{message.rstrip('.')} ({SKIP_HINT})"
            raise RowError(message, reason=error.reason, field=error.field) from None
        self.counts[error.reason] += 1
        self.first.setdefault(error.reason, str(error))

    @staticmethod
    def report_counts(
        split: str, total: int, counts: dict[str, int], first: dict[str, str]
    ) -> None:
        if not counts:
            return
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        log.warning(
            "%s: skipped %d of %d rows (data.on_invalid=skip): %s",
            split,
            sum(counts.values()),
            total,
            reasons,
        )
        for reason, message in sorted(first.items()):
            log.warning("  first %s row: %s", reason, message)
