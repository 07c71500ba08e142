"""How a raw row of each layout reads: a `Pair` (prompt, chosen, rejected) or an unpaired `Example`.

The layouts themselves, and which one a config names or the rows show, are in `formats.py`
(the registry); this module holds the readers and the values they give. A bad row raises
`RowError` naming the file, the row and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefopt.errors import RowError

EXPECTED_LAYOUTS = (
    "explicit (prompt, chosen, rejected as strings), "
    "conversational (chosen, rejected as lists of {role, content} messages, optional prompt) or "
    "implicit (chosen, rejected as strings that share the prompt as prefix); "
    "map your column names with data.columns={prompt: ..., chosen: ..., rejected: ...}"
)

Message = dict[str, Any]
UNPAIRED_COLUMNS = ("prompt", "completion", "label")
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


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


@dataclass(frozen=True)
class Example:
    """One unpaired (KTO) example: a prompt, a completion, and whether it is desirable."""

    prompt: str | list[Message]
    completion: str | list[Message]
    desirable: bool
    where: str

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


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


def read_explicit(row: dict[str, Any], where: str) -> Pair:
    prompt, chosen, rejected = (_text(row, key, where) for key in ("prompt", "chosen", "rejected"))
    return Pair(prompt, chosen, rejected, where)


def read_implicit(row: dict[str, Any], where: str) -> Pair:
    prompt, chosen, rejected = split_shared_prefix(
        _text(row, "chosen", where), _text(row, "rejected", where)
    )
    return Pair(prompt, chosen, rejected, where)


def _column(row: dict[str, Any], key: str, where: str) -> Any:
    if key not in row:
        raise RowError(
            f"{where}: missing column {key!r}; found columns {sorted(row)}; expected {EXPECTED_LAYOUTS}",
            reason="missing_column",
            field=key,
        )
    return row[key]


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = _column(row, key, where)
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


def read_conversational(row: dict[str, Any], where: str) -> Pair:
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
    value = _column(row, key, where)
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


# ---------------------------------------------------------------------------------------------
# Unpaired layout (KTO)


def example_from_row(row: dict[str, Any], where: str) -> Example:
    """One unpaired row as an `Example` (a bad row raises `RowError`)."""
    missing = [c for c in UNPAIRED_COLUMNS if c not in row]
    if missing:
        raise RowError(
            f"{where}: missing column(s) {missing}; found {sorted(row)}; unpaired data needs "
            "prompt, completion and a boolean label (rename with data.columns)",
            reason="missing_column",
            field=missing[0],
        )
    prompt, completion = row["prompt"], row["completion"]
    for key, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, (str, list)):
            raise RowError(
                f"{where}: field {key!r} is a {type(value).__name__}, expected a string or a "
                "list of messages",
                reason="wrong_type",
                field=key,
            )
    if isinstance(prompt, str) != isinstance(completion, str):
        if isinstance(prompt, list) and isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        else:
            raise RowError(
                f"{where}: 'prompt' and 'completion' must both be strings or both messages",
                reason="wrong_type",
                field="completion",
            )
    check_not_empty(where, prompt)
    return Example(prompt, completion, _label(row["label"], where), where)


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE  # csv cells are text
    raise RowError(
        f"{where}: field 'label' is {value!r}; it must be a boolean (true = desirable, false = undesirable)",
        reason="bad_label",
        field="label",
    )
