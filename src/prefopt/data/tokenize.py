"""Turn preference pairs into token ids with an exact prompt/completion boundary.

The rules, each guarding a known way to corrupt DPO's log-probabilities:

- Prompt and completion are tokenized TOGETHER, as the model will read them: the ids equal
  `enc(prompt + completion)`, never `enc(prompt) + enc(completion)` (BPE merges across the
  join, e.g. "hi " + "there" -> "hi", " there").
- The completion starts at the first token holding any completion character, so a token merged
  across the boundary is scored as completion. With a fast tokenizer this comes from the
  character offsets (the first token ending past the prompt's last character). Slow
  tokenizers have no offsets; there the boundary is the longest common prefix of
  `enc(prompt)` and `enc(prompt + completion)`, which can only move it earlier (never scores a
  completion token as prompt).
- BOS exactly once: text is tokenized without special tokens, then the tokenizer's BOS is put in
  front only if the tokenizer normally adds one and the ids do not already start with it (chat
  templates and some datasets write the BOS text themselves).
- EOS exactly once, for plain text only: appended unless the completion already ends with it.
  Conversations rendered with the chat template already end each turn with the template's own
  end-of-turn marker, so nothing is added after it.
- Too long (prompt + completion > max_length on either side of a pair): both prompts keep their
  last `max_prompt_length` tokens (after a kept BOS), then each completion keeps its start.
  A pair left with an empty completion, or whose two sides become identical, says nothing about
  preference (a reward model or DPO would see ln 2 and no gradient): it is dropped and counted
  (`too_long`, `truncated_identical`), as are pairs identical from the start (`identical`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any, TypedDict

from prefopt.data.layouts import Message, Pair
from prefopt.errors import PrefoptError, RowError

DROPPED_TOO_LONG = "too_long"
DROPPED_IDENTICAL = "identical"
DROPPED_TRUNCATED_IDENTICAL = "truncated_identical"
"""Chosen and rejected differ, but only past what `max_length` keeps."""


class TokenizedPair(TypedDict):
    chosen_input_ids: list[int]
    chosen_prompt_length: int
    rejected_input_ids: list[int]
    rejected_prompt_length: int
    prompt_input_ids: list[int]
    """The prompt alone as a generation input (with BOS, and the chat template's assistant header)."""


class PairTokenizer:
    """Tokenizes `Pair`s under one tokenizer and length budget, in batches: `texts` renders a
    pair, `tokenize_texts` encodes a batch of them in one call of the fast tokenizer."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        max_prompt_length: int,
        with_prompt_ids: bool = True,
        text_as_chat: bool = False,
    ):
        """`with_prompt_ids=False` leaves `prompt_input_ids` empty: only generation reads them
        (from validation examples), and they cost one more tokenizer pass over every prompt.
        `text_as_chat` (`data.apply_chat_template=true`): a plain-text prompt is rendered as a
        user turn and its completion as the assistant's reply, through the chat template."""
        if not 0 < max_prompt_length < max_length:
            raise PrefoptError(
                f"data.max_prompt_length={max_prompt_length} must be positive and below "
                f"data.max_length={max_length}, or no completion token would fit"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.with_prompt_ids = with_prompt_ids
        self.text_as_chat = text_as_chat
        self.bos_id = tokenizer.bos_token_id if adds_bos(tokenizer) else None
        self.eos_id = tokenizer.eos_token_id
        self.use_offsets = bool(getattr(tokenizer, "is_fast", False))
        self.backend = _plain_backend(tokenizer) if self.use_offsets else None

    def tokenize_texts(
        self, texts: Sequence[tuple[str, str, str]], add_eos: Sequence[bool]
    ) -> list[tuple[TokenizedPair | None, str | None]]:
        """Tokenize (prompt, prompt + chosen, prompt + rejected) texts (`texts`); EOS is added
        to plain text only (`add_eos`), chat templates end their turns themselves."""
        prompt_chars = [len(prompt) for prompt, _, _ in texts]
        chosen = self._encode_many([chosen for _, chosen, _ in texts], prompt_chars)
        rejected = self._encode_many([rejected for _, _, rejected in texts], prompt_chars)
        prompts = (
            self._ids_many([prompt for prompt, _, _ in texts])
            if self.with_prompt_ids
            else [None] * len(texts)
        )
        return [
            self._assemble(chosen[k], rejected[k], prompts[k], eos) for k, eos in enumerate(add_eos)
        ]

    def _assemble(
        self,
        chosen: tuple[list[int], int],
        rejected: tuple[list[int], int],
        prompt_ids: list[int] | None,
        add_eos: bool,
    ) -> tuple[TokenizedPair | None, str | None]:
        chosen = self._with_specials(*chosen, add_eos)
        rejected = self._with_specials(*rejected, add_eos)
        if chosen == rejected:
            return None, DROPPED_IDENTICAL
        prompt_ids = self._with_bos(prompt_ids) if prompt_ids is not None else []
        if max(len(chosen[0]), len(rejected[0])) > self.max_length:
            chosen, rejected = self._truncate(*chosen), self._truncate(*rejected)
            empty = any(len(ids) == prompt_length for ids, prompt_length in (chosen, rejected))
            if empty:
                return None, DROPPED_TOO_LONG
            if chosen == rejected:
                return None, DROPPED_TRUNCATED_IDENTICAL
            prompt_ids = self._keep_end(prompt_ids) if prompt_ids else prompt_ids
        return TokenizedPair(
            chosen_input_ids=chosen[0],
            chosen_prompt_length=chosen[1],
            rejected_input_ids=rejected[0],
            rejected_prompt_length=rejected[1],
            prompt_input_ids=prompt_ids,
        ), None

    # -- text ---------------------------------------------------------------------------------

    def templated(self, item: Pair | Any) -> bool:
        """Whether `item` goes through the chat template (which then ends its turns: no EOS
        is added)."""
        return item.conversational or self.text_as_chat

    def texts(self, pair: Pair) -> tuple[str, str, str]:
        """The prompt text and the two full texts (prompt + completion)."""
        if self.text_as_chat and not pair.conversational:
            pair = Pair(
                as_user_turn(pair.prompt),
                as_assistant_turn(pair.chosen),
                as_assistant_turn(pair.rejected),
                pair.where,
            )
        prompt_text = self._prompt_text(pair.prompt, pair.where)
        chosen = self._full_text(pair.prompt, prompt_text, pair.chosen, pair.where)
        rejected = self._full_text(pair.prompt, prompt_text, pair.rejected, pair.where)
        return prompt_text, chosen, rejected

    def _prompt_text(self, prompt: str | list[Message], where: str) -> str:
        if isinstance(prompt, str):
            return prompt
        return self._render(prompt, where, generation_prompt=True)

    def _full_text(
        self,
        prompt: str | list[Message],
        prompt_text: str,
        completion: str | list[Message],
        where: str,
    ) -> str:
        if isinstance(prompt, str):
            return prompt + completion
        full = self._render(prompt + completion, where, generation_prompt=False)
        if not full.startswith(prompt_text):
            raise RowError(
                f"{where}: the chat template's rendering of the conversation does not start "
                f"with its rendering of the prompt plus generation header ({prompt_text[-40:]!r}), "
                "so the completion cannot be located; the completion must begin with an "
                "assistant message, and the template must render add_generation_prompt=True "
                "as the start of that message",
                reason="template",
            )
        return full

    def _render(self, messages: list[Message], where: str, generation_prompt: bool) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise PrefoptError(
                f"{where}: conversational data needs a chat template, and this tokenizer has none; "
                "set tokenizer.chat_template or use plain-text data (data.format=explicit)"
            )
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    # -- ids ----------------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _ids_many(self, texts: list[str]) -> list[list[int]]:
        if self.backend is None:
            return [self._ids(text) for text in texts]
        return [e.ids for e in _encode_batch(self.backend, texts, offsets=False)]

    def _encode_many(
        self, full_texts: list[str], prompt_chars: list[int]
    ) -> list[tuple[list[int], int]]:
        """(ids, prompt_length) of full texts whose first `prompt_chars` characters are prompt,
        before BOS and EOS. The completion starts at the first token holding a completion
        character: from the character offsets (fast tokenizers), else from where the ids of the
        prompt alone stop being a prefix."""
        if not self.use_offsets:
            return [
                (ids, common_prefix_length(ids, self._ids(text[:chars])))
                for text, chars in zip(full_texts, prompt_chars)
                for ids in (self._ids(text),)
            ]
        if self.backend is None:  # the tokenizer's own `__call__`, with its offsets
            batch = self.tokenizer(
                full_texts, add_special_tokens=False, return_offsets_mapping=True
            )
            spans = zip(batch["input_ids"], batch["offset_mapping"])
            return [
                (list(ids), bisect.bisect_right(offsets, chars, key=_end))
                for (ids, offsets), chars in zip(spans, prompt_chars)
            ]
        return [
            (encoding.ids, _first_token_past(encoding, chars))
            for encoding, chars in zip(_encode_batch(self.backend, full_texts), prompt_chars)
        ]

    def _with_specials(
        self, ids: list[int], prompt_length: int, add_eos: bool
    ) -> tuple[list[int], int]:
        """BOS once in front (when the tokenizer adds one), EOS once at the end (plain text)."""
        if self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids, prompt_length = [self.bos_id, *ids], prompt_length + 1
        if (
            add_eos
            and self.eos_id is not None
            and (len(ids) == prompt_length or ids[-1] != self.eos_id)
        ):
            ids = [*ids, self.eos_id]
        return ids, prompt_length

    def _with_bos(self, ids: list[int]) -> list[int]:
        return [self.bos_id, *ids] if self.bos_id is not None and ids[:1] != [self.bos_id] else ids

    def _keep_end(self, prompt_ids: list[int]) -> list[int]:
        """The prompt's last `max_prompt_length` tokens, still starting with its BOS if it had one."""
        if len(prompt_ids) <= self.max_prompt_length:
            return prompt_ids
        bos = self.tokenizer.bos_token_id  # also a BOS the text itself wrote
        if bos is not None and prompt_ids[0] == bos:
            keep = self.max_prompt_length - 1
            return [bos, *prompt_ids[len(prompt_ids) - keep :]]
        return prompt_ids[len(prompt_ids) - self.max_prompt_length :]

    def _truncate(self, ids: list[int], prompt_length: int) -> tuple[list[int], int]:
        prompt = self._keep_end(ids[:prompt_length])
        completion = ids[prompt_length : prompt_length + self.max_length - len(prompt)]
        return prompt + completion, len(prompt)


def _end(offset: tuple[int, int]) -> int:
    return offset[1]


def _first_token_past(encoding: Any, chars: int) -> int:
    """The first token of `encoding` that ends past character `chars`. Token spans are in text
    order, so it is the (first) token holding that character when one does; else (a space
    trimmed off every span, or the end of the text) it is found by bisection over the span
    ends, reading a dozen spans instead of all of them."""
    token = encoding.char_to_token(chars)
    if token is None:
        return bisect.bisect_right(_SpanEnds(encoding), chars)
    ends = _SpanEnds(encoding)
    while token > 0 and ends[token - 1] > chars:  # bytes of one character share its span
        token -= 1
    return token


class _SpanEnds(Sequence):
    """Where each token of an `Encoding` ends in the text, read on demand."""

    def __init__(self, encoding: Any):
        self.encoding = encoding

    def __len__(self) -> int:
        return len(self.encoding)

    def __getitem__(self, i: int) -> int:
        span = self.encoding.token_to_chars(i)
        return span[1] if span is not None else 0


def _plain_backend(tokenizer: Any):
    """A copy of a fast tokenizer's Rust backend that neither truncates nor pads, as the
    tokenizer's own `__call__` does for text without those options; called directly, it skips
    the Python conversions of `__call__` (half the time of a batch)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    probe = "Question: hi there \u00e9t\u00e9?\n\n  Answer:  ok"
    if backend.encode(probe, add_special_tokens=False).ids != list(
        tokenizer(probe, add_special_tokens=False)["input_ids"]
    ):
        return None  # the wrapper does more than the backend (then `__call__` it is)
    return backend


def _encode_batch(backend: Any, texts: list[str], offsets: bool = True) -> list[Any]:
    if not offsets and hasattr(backend, "encode_batch_fast"):
        return backend.encode_batch_fast(texts, add_special_tokens=False)
    return backend.encode_batch(texts, add_special_tokens=False)


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of text when asked for special tokens."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_special[:1] == [bos] and without[:1] != [bos]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def untokenizable_error(where: str, error: Exception) -> RowError:
    return RowError(
        f"{where}: the tokenizer failed on this row ({type(error).__name__}: {str(error)[:200]})",
        reason="untokenizable",
    )


def dropped_row_error(where: str, reason: str, pair_tokenizer: PairTokenizer) -> RowError:
    """The error for a pair the tokenizer dropped (`reason`: identical or too long)."""
    if reason == DROPPED_IDENTICAL:
        return RowError(
            f"{where}: 'chosen' and 'rejected' are identical, so the pair states no preference",
            reason=reason,
            field="rejected",
        )
    if reason == DROPPED_TRUNCATED_IDENTICAL:
        return RowError(
            f"{where}: 'chosen' and 'rejected' differ only past data.max_length="
            f"{pair_tokenizer.max_length} (data.max_prompt_length="
            f"{pair_tokenizer.max_prompt_length}): truncated, they are the same text and state "
            "no preference; raise data.max_length",
            reason=reason,
        )
    return RowError(
        f"{where}: too long: it does not fit data.max_length={pair_tokenizer.max_length} "
        f"(data.max_prompt_length={pair_tokenizer.max_prompt_length}) with a completion left "
        "that tells chosen from rejected; raise data.max_length",
        reason=reason,
    )


def as_user_turn(prompt: str) -> list[Message]:
    return [{"role": "user", "content": prompt}]


def as_assistant_turn(completion: str) -> list[Message]:
    return [{"role": "assistant", "content": completion}]
