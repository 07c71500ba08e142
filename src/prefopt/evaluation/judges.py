"""Judges score completions; the evaluation compares the policy's scores with the reference's.

A judge is anything with `score(prompts, completions) -> list[float]`, higher = better, where
`completions[i]` is the text that follows `prompts[i]`:

- `ToyJudge`: the toy world's ground-truth reward (`prefopt.toy.reward`), which reads the
  completion only.
- `RewardModelJudge`: any Hugging Face sequence-classification checkpoint with one output (a
  reward model). It reads the exchange the way it was trained to: through its tokenizer's chat
  template (the prompt as the user turn, the completion as the assistant turn) when it has one,
  else as the plain text prompt + completion.

`build_judge` instantiates the judge that `eval.judge` names among `eval.judges`, each a
`_target_` node: a new judge is a class here (or in any importable module) and a
`conf/eval/<name>.yaml` that adds it to `judges`.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from prefopt.config.targets import locate_target
from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt.evaluation")


class Judge(Protocol):
    name: str

    def score(
        self, prompts: list[str], completions: list[str], device: torch.device | None = None
    ) -> list[float]: ...


class ToyJudge:
    name = "toy"
    needs_toy_world = True
    """It scores the toy world's sentiment lexicon: meaningless on other data."""

    def score(
        self, prompts: list[str], completions: list[str], device: torch.device | None = None
    ) -> list[float]:
        from prefopt.toy import reward

        return [reward(completion) for completion in completions]


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
                f"eval.judge_path={path}: a reward model has exactly one output (num_labels=1), "
                f"this checkpoint has {self.model.config.num_labels}"
            )
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise PrefoptError(f"eval.judge_path={path}: its tokenizer has no pad or eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Sequence classifiers read the last non-padding token; they find it through this id.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.model.eval().requires_grad_(False)
        self.batch_size = batch_size

    def render(self, prompt: str, completion: str) -> str:
        """The text the reward model reads for one exchange."""
        if not self.tokenizer.chat_template:
            return prompt + completion
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion.strip()},
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    @torch.no_grad()
    def score(
        self, prompts: list[str], completions: list[str], device: torch.device | None = None
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
                    return_tensors="pt",
                    # A rendered chat template already holds its BOS; adding one would double it.
                    add_special_tokens=not self.tokenizer.chat_template,
                ).to(device)
                logits = self.model(**batch).logits
                scores += logits[:, 0].float().cpu().tolist()
        finally:
            self.model.to("cpu")
        return scores


def build_judge(cfg, uses_toy_data: bool) -> Judge | None:
    """The judge `eval.judge` names in `eval.judges`, or None for a null one (`none`)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    check_judge_choice(cfg)
    spec = cfg.judges[cfg.judge]
    if spec is None:
        return None
    judge_class = locate_target(f"eval.judges.{cfg.judge}._target_", spec._target_)
    if getattr(judge_class, "needs_toy_world", False) and not uses_toy_data:
        log.warning(
            "eval.judge=%s scores the toy world's sentiment lexicon, but this run's data is "
            "not the toy world: evaluating without a judge (KL and lengths only). Judge with "
            "a reward model: eval=reward_model eval.judge_path=/path/to/reward_model",
            cfg.judge,
        )
        return None
    return instantiate(spec)


def check_judge_choice(cfg) -> None:
    """`eval.judge` names one of `eval.judges`; the reward model needs its checkpoint."""
    if cfg.judge not in cfg.judges:
        raise PrefoptError(
            f"eval.judge={cfg.judge!r}: choose one of {', '.join(sorted(cfg.judges))}"
        )
    spec = cfg.judges[cfg.judge]
    if spec is not None:
        locate_target(f"eval.judges.{cfg.judge}._target_", spec.get("_target_"))
    if cfg.judge == "reward_model" and not cfg.judge_path:
        raise PrefoptError(
            "eval.judge=reward_model needs eval.judge_path (a sequence-classification "
            "checkpoint with one output)"
        )
