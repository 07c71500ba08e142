"""The registry of data layouts (`LAYOUTS`): how a raw row reads as a pair or a KTO example.

`data.format` names one of them, or `auto` (`FORMATS`); the config check, the layout detection
and preparation all read this registry. Four layouts exist in the wild:

- explicit: `prompt`, `chosen`, `rejected` are strings (the completions exclude the prompt).
- conversational: `chosen` / `rejected` are lists of `{role, content}` messages. `prompt` is
  optional: a list of messages, or a string taken as one user message. Without it, the prompt is
  the messages both conversations begin with. Completions that repeat the prompt messages
  (as in UltraFeedback) have them stripped. These pairs are rendered later with the tokenizer's
  chat template.
- implicit: only `chosen` / `rejected`, two full transcripts that share the prompt as a prefix
  (Anthropic HH-RLHF). The prompt is their longest common prefix, cut back so it never ends
  inside a word.
- unpaired (KTO): `prompt`, `completion` (strings, or message lists for chat data) and a boolean
  `label` (true = desirable). Each row is one `Example`; rows of the paired layouts become two.

Pairs whose chosen and rejected are identical are not errors here (real datasets contain a
few); the tokenizer step drops and counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefopt.data.layouts import (
    EXPECTED_LAYOUTS,
    Example,
    Pair,
    check_not_empty,
    example_from_row,
    read_conversational,
    read_explicit,
    read_implicit,
)
from prefopt.data.rows import Rows
from prefopt.data.validate import InvalidRows
from prefopt.errors import PrefoptError, RowError


@dataclass(frozen=True)
class Layout:
    """One layout of raw rows: how a row is read, and what it gives."""

    read: Callable[[dict[str, Any], str], Pair | Example]
    paired: bool
    """True: a row reads as a `Pair`; False: as one `Example` (unpaired, KTO)."""


LAYOUTS: dict[str, Layout] = {
    "explicit": Layout(read_explicit, paired=True),
    "conversational": Layout(read_conversational, paired=True),
    "implicit": Layout(read_implicit, paired=True),
    "unpaired": Layout(example_from_row, paired=False),
}
FORMATS = ("auto", *LAYOUTS)
"""The choices of `data.format`: a layout, or `auto` (detected from the first rows)."""


def read_row(row: dict[str, Any], where: str, layout: str) -> Pair | Example:
    """One row of a known layout as a `Pair` (or an `Example`, unpaired layout); a bad row,
    or one without a prompt, raises `RowError`."""
    item = LAYOUTS[layout].read(row, where)
    check_not_empty(where, item.prompt)
    return item


def resolve_layout(fmt: str, rows: Rows, paired: bool, on_invalid: str) -> str:
    """The layout `data.format` (`fmt`) names, or the one detected from the first rows (auto).

    Unpaired rows need a loss that trains on single examples (`paired=False`: KTO).
    """
    if fmt not in FORMATS:
        raise PrefoptError(f"data.format={fmt!r} is not one of: {', '.join(FORMATS)}")
    if fmt == "unpaired" or (fmt == "auto" and len(rows) and _is_unpaired(rows.rows[0])):
        if paired:
            raise PrefoptError(
                f"{rows.origin}: holds unpaired (prompt, completion, label) rows, but this loss "
                "trains on pairs (prompt, chosen, rejected); use loss=kto or paired data"
            )
        return "unpaired"
    if fmt != "auto":
        return fmt
    try:
        return detect_format(rows, tolerant=on_invalid == "skip")
    except RowError as error:
        InvalidRows(on_invalid).record(error)  # raises, with the hint to skip
        raise


def _is_unpaired(row: dict[str, Any]) -> bool:
    return "completion" in row and "label" in row and "chosen" not in row


def detect_format(rows: Rows, probe: int = 8, tolerant: bool = False) -> str:
    """The layout of the first `probe` rows, from their columns and value types.

    `tolerant` (data.on_invalid=skip): rows whose layout cannot be told are left out of the
    vote (they are reported later, row by row), unless no probed row is valid at all.
    """
    layouts: dict[str, str] = {}
    first_error: RowError | None = None
    for i in range(min(probe, len(rows))):
        try:
            layouts.setdefault(_layout_of(rows.rows[i], rows.where(i)), rows.where(i))
        except RowError as error:
            if not tolerant:
                raise
            first_error = first_error or error
    if not layouts and first_error is not None:
        raise first_error
    if len(layouts) > 1:
        found = "; ".join(f"{layout} at {where}" for layout, where in layouts.items())
        raise PrefoptError(f"rows have different layouts ({found}); set data.format explicitly")
    return next(iter(layouts), "explicit")


def _layout_of(row: dict[str, Any], where: str) -> str:
    if "chosen" not in row or "rejected" not in row:
        raise RowError(
            f"{where}: found columns {sorted(row)}; expected {EXPECTED_LAYOUTS}",
            reason="missing_column",
        )
    values = [row["chosen"], row["rejected"], row.get("prompt")]
    if any(isinstance(v, list) for v in values):
        return "conversational"
    if isinstance(row["chosen"], str) and isinstance(row["rejected"], str):
        return "explicit" if isinstance(row.get("prompt"), str) else "implicit"
    key = next(k for k in ("chosen", "rejected") if not isinstance(row[k], (str, list)))
    raise RowError(
        f"{where}: field {key!r} is a {type(row[key]).__name__}, expected a string (or a list "
        f"of {{role, content}} messages); expected {EXPECTED_LAYOUTS}",
        reason="wrong_type",
        field=key,
    )
