"""`RewardModelJudge`: a local sequence-classification checkpoint (a reward model) as a judge.

It brings its own tokenizer and reads text: it never sees the policy's token ids, so a reward
model of another family (another vocabulary, another chat template) scores the policy's
completions as it was trained to, through its tokenizer's chat template (the prompt as the data
wrote it: a text as the user turn, a conversation's messages as they are; the completion as the
assistant turn) when it has one, else as the plain text prompt + completion. `judge=reward_model judge.path=/path/to/reward_model`.

The text becomes ids as prefopt's training made them (`prefopt.data.tokenize`), so a reward
model trained with `task=reward` reads at judgement what it read in training: BOS once (where
the tokenizer adds one, and never a second after a chat template that wrote it), and for plain
text the EOS it was trained to end on. The score is read at the last real token of each
right-padded row (`prefopt.reward.scores`), also where the pad token is the EOS.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from prefopt.data.tokenize import adds_bos
from prefopt.errors import PrefoptError
from prefopt.reward.scores import sequence_scores


class RewardModelJudge:
    """A reward model: the single logit of a sequence classifier on prompt + completion.

    Kept on the CPU between calls and moved to `device` only while scoring, so a large reward
    model costs accelerator memory during evaluation only.
    """

    name = "reward_model"

    def __init__(
        self,
        path: str,
        batch_size: int = 8,
        max_length: int | None = None,
        dtype: torch.dtype | str = torch.float32,
        trust_remote_code: bool = False,
    ):
        if isinstance(dtype, str):  # `model.dtype` from the config: float32, bfloat16, float16
            from prefopt.model.loading import DTYPES

            dtype = DTYPES[dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code
        )
        if self.model.config.num_labels != 1:
            raise PrefoptError(
                f"judge.path={path}: a reward model has exactly one output (num_labels=1), "
                f"this checkpoint has {self.model.config.num_labels}"
            )
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise PrefoptError(f"judge.path={path}: its tokenizer has no pad or eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Sequence classifiers read the last non-padding token; they find it through this id.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.model.eval().requires_grad_(False)
        self.batch_size = batch_size
        self.max_length = max_length

    def render(self, prompt: str | list[dict], completion: str) -> str:
        """The text the reward model reads for one exchange: the prompt as the data wrote it
        (a text as one user turn, a conversation's messages as they are) and the completion as
        the assistant's turn, through the reward model's own chat template."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not self.tokenizer.chat_template:
            if isinstance(prompt, str):
                return prompt + completion
            turns = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return f"{turns}assistant: {completion.strip()}"
        exchange = [*messages, {"role": "assistant", "content": completion.strip()}]
        return self.tokenizer.apply_chat_template(exchange, tokenize=False)

    def encode(self, text: str) -> list[int]:
        """`text`'s ids as training made them: BOS once in front (where the tokenizer adds
        one), and after plain text (no chat template) the EOS, once; at most `max_length` ids
        (the start kept, so a cut text has no EOS, as in training)."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        if adds_bos(self.tokenizer) and ids[:1] != [bos]:
            ids = [bos, *ids]
        if not self.tokenizer.chat_template and eos is not None and ids[-1:] != [eos]:
            ids = [*ids, eos]
        limit = self.max_length or self.tokenizer.model_max_length
        return ids[:limit] if limit and limit < len(ids) else ids

    def _padded(self, rows: list[list[int]], device) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}

    @torch.no_grad()
    def score(
        self,
        prompts: list[str | list[dict]],
        completions: list[str],
        device: torch.device | None = None,
    ) -> list[float]:
        device = device or torch.device("cpu")
        self.model.to(device)
        scores: list[float] = []
        try:
            rows = [self.encode(self.render(p, c)) for p, c in zip(prompts, completions)]
            for start in range(0, len(rows), self.batch_size):
                batch = self._padded(rows[start : start + self.batch_size], device)
                scores += sequence_scores(self.model, **batch).cpu().tolist()
        finally:
            self.model.to("cpu")
        return scores
