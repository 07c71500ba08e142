"""Whether `model.reference_path` can be compared with the policy, checked before any weights load.

Every loss with a reference reads log π(y|x) − log π_ref(y|x) token by token: both models must
score the same token ids as the same tokens. A reference trained on another tokenizer would run
to the end of training and report a KL of tens of nats that means nothing. So before anything
loads, from `config.json` and the tokenizer files alone (no weights), a reference is refused in
one line naming what differs:

- its tokenizer's vocabulary (every token and its id, added and special tokens included) must
  be the policy's: the run tokenizes with the policy's tokenizer, and the reference must read
  those ids as the same tokens;
- the policy's tokenizer must fit the reference's output layer (`vocab_size`): a larger vocab
  has ids the reference cannot score. Equal tokenizers with differently padded embedding
  matrices (Qwen2.5's sizes differ between model sizes) are accepted;
- a reference saved without a tokenizer is judged by its `config.json` alone: its `vocab_size`
  must be the policy's.

Special tokens are part of the vocabulary compared; which of them a tokenizer names as its
bos/eos/pad only decides how the policy's tokenizer builds the data (which both models then
score), so a different choice there is reported in a warning, not refused. The reward-model
judge is not checked: it scores text with its own tokenizer, no log-ratio involved.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt")

SPECIAL = ("bos_token_id", "eos_token_id", "pad_token_id")


def check_reference_compatible(
    model_cfg, policy_path: str | None = None, download: bool = False
) -> bool:
    """Refuse a `model.reference_path` whose token space is not the policy's (module docstring).

    `policy_path`: where the policy is (default `model.path`; the toy world's model once it is
    built). Without `download` (the config checks, which never reach the network), a hub id is
    read from the local Hugging Face cache only, and the check is left for later when its files
    are not there: the entry point calls it again with `download=True` just before the weights
    load. True when it compared the two; nothing to compare without a reference or for `toy`."""
    policy, reference = policy_path or model_cfg.path, model_cfg.reference_path
    if not reference or reference == policy or "toy" in (policy, reference):
        return False
    trust = bool(model_cfg.get("trust_remote_code", False))
    spaces = [TokenSpace.of(path, trust, local_only=not download) for path in (policy, reference)]
    if None in spaces:
        return False  # a hub checkpoint not in the cache yet: checked before its weights load
    problems = token_space_differences(*spaces)
    if problems:
        raise PrefoptError(
            f"model.reference_path={reference} cannot be compared with model.path={policy}: "
            f"{'; '.join(problems)}; log π/π_ref needs one token space: use a reference with the "
            "policy's tokenizer (e.g. the checkpoint the policy was fine-tuned from), or leave "
            "model.reference_path unset (π_ref = the initial policy)"
        )
    return True


class TokenSpace:
    """What a checkpoint's token ids mean: its output size and, when it has a tokenizer, the
    tokenizer's vocabulary and special ids."""

    def __init__(self, vocab_size: int | None, vocab: dict[str, int] | None, special: dict):
        self.vocab_size, self.vocab, self.special = vocab_size, vocab, special

    @classmethod
    def of(
        cls, path: str, trust_remote_code: bool = False, local_only: bool = False
    ) -> TokenSpace | None:
        """None: `local_only` and a hub id whose config is not in the local cache."""
        from transformers import AutoConfig, AutoTokenizer

        options = dict(trust_remote_code=trust_remote_code, local_files_only=local_only)
        try:
            config = AutoConfig.from_pretrained(path, **options)
        except (OSError, ValueError) as error:
            if local_only and not Path(path).exists():
                return None
            raise PrefoptError(f"{path}: cannot read its config.json ({error})") from None
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **options)
        except (OSError, ValueError, TypeError):  # saved without a tokenizer: config alone
            return cls(getattr(text, "vocab_size", None), None, {})
        special = {key: getattr(tokenizer, key, None) for key in SPECIAL}
        return cls(getattr(text, "vocab_size", None), tokenizer.get_vocab(), special)

    @property
    def vocab_hash(self) -> str:
        items = json.dumps(sorted(self.vocab.items()), ensure_ascii=False).encode()
        return hashlib.sha256(items).hexdigest()[:12]


def token_space_differences(policy: TokenSpace, reference: TokenSpace) -> list[str]:
    """What differs between the two token spaces that makes log-ratios meaningless (empty: none)."""
    if policy.vocab is None or reference.vocab is None:
        if policy.vocab_size != reference.vocab_size:
            return [
                f"vocab_size {reference.vocab_size} (config.json) vs the policy's {policy.vocab_size}"
            ]
        return []
    problems = []
    if policy.vocab != reference.vocab:
        other = {token: i for token, i in reference.vocab.items() if policy.vocab.get(token) != i}
        example = next(iter(sorted(other.items(), key=lambda item: item[1])), None)
        shown = f", e.g. {example[0]!r} is id {example[1]} there" if example else ""
        problems.append(
            f"its tokenizer's vocabulary differs ({len(reference.vocab)} tokens, hash "
            f"{reference.vocab_hash}, vs the policy's {len(policy.vocab)}, hash "
            f"{policy.vocab_hash}; {len(other)} tokens have another id or none in the "
            f"policy's{shown})"
        )
    largest = max(policy.vocab.values(), default=-1)
    if reference.vocab_size is not None and largest >= reference.vocab_size:
        problems.append(
            f"its output layer scores {reference.vocab_size} ids (config.json vocab_size), the "
            f"policy's tokenizer uses ids up to {largest}"
        )
    if not problems:
        changed = [
            f"{key}={reference.special[key]} vs {policy.special[key]}"
            for key in SPECIAL
            if reference.special.get(key) != policy.special.get(key)
        ]
        if changed:
            log.warning(
                "model.reference_path: its tokenizer names other special tokens (%s); the "
                "vocabularies agree, and the data is built with the policy's tokenizer",
                ", ".join(changed),
            )
    return problems
