"""Normalise raw rows of any supported layout into preference pairs (prompt, chosen, rejected).

Three layouts exist in the wild:

- explicit: `prompt`, `chosen`, `rejected` are strings (the completions exclude the prompt).
- conversational: `chosen` / `rejected` are lists of `{role, content}` messages. `prompt` is
  optional: a list of messages, or a string taken as one user message. Without it, the prompt is
  the messages both conversations begin with. Completions that repeat the prompt messages
  (as in UltraFeedback) have them stripped. These pairs are rendered later with the tokenizer's
  chat template.
- implicit: only `chosen` / `rejected`, two full transcripts that share the prompt as a prefix
  (Anthropic HH-RLHF). The prompt is their longest common prefix, cut back so it never ends
  inside a word.

Pairs whose chosen and rejected are identical are not errors here (real datasets contain a
few); the tokenizer step drops and counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefopt.data.sources import Rows
from prefopt.data.validate import InvalidRows
from prefopt.errors import PrefoptError, RowError

LAYOUTS = ("explicit", "conversational", "implicit")
_EXPECTED = (
    "explicit (prompt, chosen, rejected as strings), "
    "conversational (chosen, rejected as lists of {role, content} messages, optional prompt) or "
    "implicit (chosen, rejected as strings that share the prompt as prefix); "
    "map your column names with data.columns={prompt: ..., chosen: ..., rejected: ...}"
)

Message = dict[str, Any]


@dataclass(frozen=True)
class Pair:
    """One preference: the same prompt, a preferred and a dispreferred completion.

    Plain text: all three are strings. Conversational: all three are message lists, the
    completions holding only the messages that follow the prompt.
    """

    prompt: str | list[Message]
    chosen: str | list[Message]
    rejected: str | list[Message]
    where: str
    """Where the row came from (file and line), for error messages."""

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


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
            f"{where}: found columns {sorted(row)}; expected {_EXPECTED}", reason="missing_column"
        )
    values = [row["chosen"], row["rejected"], row.get("prompt")]
    if any(isinstance(v, list) for v in values):
        return "conversational"
    if isinstance(row["chosen"], str) and isinstance(row["rejected"], str):
        return "explicit" if isinstance(row.get("prompt"), str) else "implicit"
    key = next(k for k in ("chosen", "rejected") if not isinstance(row[k], (str, list)))
    raise RowError(
        f"{where}: field {key!r} is a {type(row[key]).__name__}, expected a string (or a list "
        f"of {{role, content}} messages); expected {_EXPECTED}",
        reason="wrong_type",
        field=key,
    )


def normalise(rows: Rows, fmt: str = "auto", invalid: InvalidRows | None = None) -> list[Pair]:
    """Every row as a `Pair`; `fmt` is a layout name or `auto` (detected from the first rows).

    A bad row raises `RowError`, or, given `invalid` (the data.on_invalid policy), is handed to
    it: it raises in `error` mode and counts the row in `skip` mode.
    """
    if fmt == "auto":
        fmt = detect_format(rows, tolerant=invalid is not None and invalid.skipping)
    if fmt not in LAYOUTS:
        raise PrefoptError(f"data.format={fmt!r} is not one of: auto, {', '.join(LAYOUTS)}")
    pairs = []
    for i, row in enumerate(rows.rows):
        try:
            pair = to_pair(row, rows.where(i), fmt)
            check_not_empty(pair.where, pair.prompt)
        except RowError as error:
            if invalid is None:
                raise
            invalid.record(error)
            continue
        pairs.append(pair)
    return pairs


def to_pair(row: dict[str, Any], where: str, layout: str) -> Pair:
    """One row of a known layout as a `Pair` (a bad row raises `RowError`)."""
    return _LAYOUT_READERS[layout](row, where)


def check_not_empty(where: str, prompt) -> None:
    """An empty prompt (text, or messages whose contents are all empty) is a bad row. An empty
    completion is not: preferring an empty answer to a harmful one is a real preference (it
    occurs in HH-RLHF), trained as a completion of EOS alone."""
    if is_empty(prompt):
        raise RowError(
            f"{where}: field 'prompt' is empty; every row needs a prompt",
            reason="empty",
            field="prompt",
        )


def is_empty(value) -> bool:
    """Text, or messages, with nothing but whitespace in them."""
    if isinstance(value, str):
        return not value.strip()
    return all(not str(m.get("content") or "").strip() for m in value)


# ---------------------------------------------------------------------------------------------
# Plain-text layouts


def _explicit(row: dict[str, Any], where: str) -> Pair:
    prompt, chosen, rejected = (_text(row, key, where) for key in ("prompt", "chosen", "rejected"))
    return Pair(prompt, chosen, rejected, where)


def _implicit(row: dict[str, Any], where: str) -> Pair:
    prompt, chosen, rejected = split_shared_prefix(
        _text(row, "chosen", where), _text(row, "rejected", where)
    )
    return Pair(prompt, chosen, rejected, where)


def _text(row: dict[str, Any], key: str, where: str) -> str:
    if key not in row:
        raise RowError(
            f"{where}: missing column {key!r}; found columns {sorted(row)}; expected {_EXPECTED}",
            reason="missing_column",
            field=key,
        )
    value = row[key]
    if not isinstance(value, str):
        hint = " (messages need data.format=conversational)" if isinstance(value, list) else ""
        raise RowError(
            f"{where}: field {key!r} is a {type(value).__name__}, expected a string{hint}",
            reason="wrong_type",
            field=key,
        )
    return value


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen completion, rejected completion) of two transcripts sharing a prefix.

    The prompt is the longest common prefix, moved back so that it never ends inside a word
    ("...Assistant: Hel" + "lo" / "p" becomes "...Assistant:" + " Hello" / " Help"), and without
    trailing whitespace: the whitespace goes to the completions, where space-prefixed BPE
    tokens expect it.
    """
    k = common_prefix_chars(chosen, rejected)
    if k == len(chosen) or k == len(rejected):
        # One transcript contains the other whole (or they are equal). Ending with a speaker
        # marker ("...Assistant:"), the shorter one holds an empty reply: the prompt is all of it.
        # Otherwise the completions start at the last whitespace, so each keeps its last word.
        shorter = chosen[:k].rstrip()
        if shorter.endswith(":"):
            k = len(shorter)
        while k > 0 and not chosen[k - 1].isspace() and not shorter.endswith(":"):
            k -= 1
    while k > 0 and chosen[k - 1].isalnum() and _word_continues(chosen, rejected, k):
        k -= 1
    while k > 0 and chosen[k - 1].isspace():
        k -= 1
    # A transcript that ends with the assistant marker (and maybe a space) has an empty reply.
    return chosen[:k], _unless_blank(chosen[k:]), _unless_blank(rejected[k:])


def _unless_blank(completion: str) -> str:
    return completion if completion.strip() else ""


def common_prefix_chars(a: str, b: str) -> int:
    """Length of the longest common prefix, by bisection over slice comparisons (done in C):
    transcripts share hundreds of characters, and a loop over them is slow in Python."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _word_continues(chosen: str, rejected: str, k: int) -> bool:
    return any(k < len(text) and text[k].isalnum() for text in (chosen, rejected))


# ---------------------------------------------------------------------------------------------
# Conversational layout


def _conversational(row: dict[str, Any], where: str) -> Pair:
    chosen = _messages(row, "chosen", where)
    rejected = _messages(row, "rejected", where)
    prompt = row.get("prompt")
    if prompt is None:
        # The prompt is what both conversations share; if one contains the other whole, the
        # last message of the shorter one is kept as its completion.
        k = 0
        while k < min(len(chosen), len(rejected)) and _same(chosen[k], rejected[k]):
            k += 1
        k = min(k, len(chosen) - 1, len(rejected) - 1)
        prompt_messages, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
    else:
        prompt_messages = (
            [{"role": "user", "content": prompt}]
            if isinstance(prompt, str)
            else _messages(row, "prompt", where)
        )
        chosen = _after_prompt(chosen, prompt_messages)
        rejected = _after_prompt(rejected, prompt_messages)
    if not prompt_messages:
        raise RowError(
            f"{where}: chosen and rejected share no leading message, so there is no prompt; "
            "add a 'prompt' column (string or messages)",
            reason="empty",
            field="prompt",
        )
    return Pair(prompt_messages, chosen, rejected, where)


def _messages(row: dict[str, Any], key: str, where: str) -> list[Message]:
    if key not in row:
        raise RowError(
            f"{where}: missing column {key!r}; found columns {sorted(row)}; expected {_EXPECTED}",
            reason="missing_column",
            field=key,
        )
    value = row[key]
    if isinstance(value, str):
        # A plain-string completion next to a message-list prompt is the assistant's reply.
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list):
        raise RowError(
            f"{where}: field {key!r} is a {type(value).__name__}, expected a list of messages",
            reason="wrong_type",
            field=key,
        )
    if not value:
        raise RowError(
            f"{where}: field {key!r} is an empty list of messages", reason="empty", field=key
        )
    for j, message in enumerate(value):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and "content" in message
        ):
            raise RowError(
                f"{where}: field {key!r} message {j} is {message!r:.80}; expected {{'role': str, 'content': ...}}",
                reason="wrong_type",
                field=key,
            )
    return value


def _same(a: Message, b: Message) -> bool:
    return a["role"] == b["role"] and a["content"] == b["content"]


def _after_prompt(messages: list[Message], prompt: list[Message]) -> list[Message]:
    n = len(prompt)
    if len(messages) > n and all(_same(m, p) for m, p in zip(messages[:n], prompt)):
        return messages[n:]
    return messages


_LAYOUT_READERS = {"explicit": _explicit, "conversational": _conversational, "implicit": _implicit}
