"""`RewardModelJudge`: a local sequence-classification checkpoint (a reward model) as a judge.

It brings its own tokenizer and reads text: it never sees the policy's token ids, so a reward
model of another family (another vocabulary, another chat template) scores the policy's
completions as it was trained to, through its tokenizer's chat template (the prompt as the data
wrote it: a text as the user turn, a conversation's messages as they are; the completion as the
assistant turn) when it has one, else as the plain text prompt + completion. `judge=reward_model judge.path=/path/to/reward_model`.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from prefopt.errors import PrefoptError


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
            texts = [self.render(p, c) for p, c in zip(prompts, completions)]
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                    # A rendered chat template already holds its BOS; adding one would double it.
                    add_special_tokens=not self.tokenizer.chat_template,
                ).to(device)
                logits = self.model(**batch).logits
                scores += logits[:, 0].float().cpu().tolist()
        finally:
            self.model.to("cpu")
        return scores
