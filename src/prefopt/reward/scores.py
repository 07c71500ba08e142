"""A reward model's score of each sequence: its one output at the sequence's last real token.

Transformers' sequence classifiers find that token as the rightmost one whose id differs from
`config.pad_token_id`. Where the pad token IS the EOS token (Llama-3 and many chat models ship
no pad token, and the customary fix pads with EOS) and the sequences end with the EOS they were
trained with, that rule skips the EOS and reads the token before it; in a batch whose pad id
also occurs elsewhere it reads the wrong token altogether, so chosen and rejected can come out
alike. Here the position comes from the attention mask instead (right padding: a row's real
tokens are its first `attention_mask.sum()` positions), and the head is applied to the base
model's hidden state there — the same computation the classifier's forward makes at that
position, for the decoder families whose head is `score` (Llama, Qwen, Mistral, Gemma, Phi,
GPT-2, OPT, GPT-NeoX, ...). A classifier with another head falls back on its own forward,
and only where that forward cannot mistake a real token for padding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prefopt.errors import PrefoptError


def last_real_token(attention_mask: Tensor) -> Tensor:
    """Each row's last attended position, for right-padded rows (their real tokens first).

    Raises on an empty row or on a row that is not right padded (a hole or left padding would
    make the last attended position differ from the count of real tokens minus one)."""
    lengths = attention_mask.sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError("a row with no real token has no score")
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    prefix = (positions[None, :] < lengths[:, None]).to(attention_mask.dtype)
    if not torch.equal(prefix, attention_mask):
        raise ValueError("reward scores read right-padded rows: each row's real tokens first")
    return lengths - 1


def sequence_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """[rows] float32 scores of a one-output sequence classifier on right-padded rows."""
    last = last_real_token(attention_mask)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    head = getattr(model, "score", None)
    base = getattr(model, "base_model", None)
    if isinstance(head, nn.Module) and base is not None and base is not model:
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return head(hidden.last_hidden_state[rows, last]).squeeze(-1).float()
    pad_id = model.config.pad_token_id
    if pad_id is not None and bool((input_ids[attention_mask.bool()] == pad_id).any()):
        raise PrefoptError(
            f"{type(model).__name__}: its pad token id {pad_id} also occurs among the real "
            "tokens (pad == eos?), and its own forward would read the score before it; give "
            "the tokenizer a pad token of its own"
        )
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return logits[:, 0].float()
