"""The prompt as the user wrote it (text, or a list of {role, content} messages), kept beside
its token ids.

Judges read it: a reward model applies its own chat template to the messages, a function gets
them as they are. Text decoded from the policy's chat-templated ids would not do: special
tokens dropped, role headers turn into plain words, and a multi-turn conversation collapses
into one user turn of the judge's template. Prepared examples hold it JSON-encoded in the
`original_prompt` column (Arrow holds one type per column: a string for both kinds).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

ORIGINAL_PROMPT = "original_prompt"

Prompt = str | list[dict[str, Any]]


def encode_prompt(prompt: Prompt) -> str:
    return json.dumps(prompt, ensure_ascii=False)


def display_text(prompt: Prompt) -> str:
    """A prompt as one line of a table: text as it is, a conversation as `role: content`
    turns."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)


def originals_of(
    prompts: list[list[int]], examples, prompt_ids_of: Callable[[dict], list[int]], tokenizer
) -> list[Prompt]:
    """The prompt as written of each of `prompts` (token ids), found among `examples` by their
    prompt ids (`prompt_ids_of(example)`); an example prepared without one gives its ids'
    decoded text."""
    found: dict[tuple[int, ...], str | None] = {tuple(p): None for p in prompts}
    for example in examples:
        key = tuple(prompt_ids_of(example))
        if key in found and found[key] is None:
            found[key] = example.get(ORIGINAL_PROMPT) or ""
    return [
        json.loads(found[tuple(p)])
        if found[tuple(p)]
        else tokenizer.decode(p, skip_special_tokens=True)
        for p in prompts
    ]
