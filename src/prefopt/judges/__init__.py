"""Judges score completions, higher = better; evaluation and the online loop share them.

A judge is anything with `score(prompts, completions, device=None) -> list[float]`, where
`completions[i]` is the text that follows `prompts[i]`. A prompt is as the data wrote it: a
text, or for conversational data the list of {role, content} messages before the completion
(never text decoded from the policy's chat-templated ids). It receives no token ids, so it
never depends on the policy's tokenizer. The built-in ones, picked with `judge=<name>`
(`conf/judge/`, schemas in `prefopt.config.judges_schema`):

- `toy`: `toy.ToyJudge`, the toy world's ground-truth reward of the completion.
- `reward_model`: `reward_model.RewardModelJudge`, a sequence-classification checkpoint with its
  own tokenizer and chat template (`judge.path`).
- `python`: `python.PythonJudge`, a function `(prompts, completions) -> rewards` named by
  `judge.function`.
- `none`: no judge.

`build_judge(cfg.judge, uses_toy_data)` builds the one the `judge` section names (None for
`none`); `check_judge_config` checks it before the run starts. Callers score through
`score_completions` (`prefopt.judges.scores`), which turns a judge that raises or returns a
non-finite or missing score into counted failures rather than a crash (see its contract).
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prefopt.config.judges_schema import judge_label
from prefopt.config.targets import check_target_node, locate_target
from prefopt.errors import PrefoptError
from prefopt.judges.scores import JudgeScores, paired, score_completions, ties

log = logging.getLogger("prefopt.judges")


class Judge(Protocol):
    name: str

    def score(
        self,
        prompts: list[str | list[dict]],
        completions: list[str],
        device: torch.device | None = None,
    ) -> list[float]: ...


def build_judge(judge_cfg, uses_toy_data: bool) -> Judge | None:
    """The judge the `judge` section (`judge_cfg`, a `_target_` node) describes, or None for
    `judge=none`. `uses_toy_data`: whether the run's data is the toy world; the toy judge
    steps aside (None, with a warning) on other data."""
    judge_cfg = _as_node(judge_cfg)
    check_judge_config(judge_cfg)
    if judge_cfg is None or judge_cfg.get("_target_") is None:
        return None
    judge_class = locate_target("judge._target_", judge_cfg._target_)
    if getattr(judge_class, "needs_toy_world", False) and not uses_toy_data:
        log.warning(
            "judge=%s scores the toy world's sentiment lexicon, but this run's data is not the "
            "toy world: going on without a judge. Judge with a reward model: "
            "judge=reward_model judge.path=/path/to/reward_model",
            judge_label(judge_cfg),
        )
        return None
    return instantiate(judge_cfg)


def check_judge_config(judge_cfg) -> None:
    """Before the run starts: the `_target_` imports and takes the node's other keys; for
    `judge=python`, `judge.function` imports too. One line naming the key otherwise."""
    judge_cfg = _as_node(judge_cfg)
    if judge_cfg is None or judge_cfg.get("_target_") is None:
        return
    check_target_node("judge", judge_cfg)
    if judge_label(judge_cfg).startswith("python:"):
        function = judge_cfg.get("function")
        if not function:
            raise PrefoptError(
                "judge=python needs judge.function, the dotted path of a function "
                "(prompts, completions) -> rewards, e.g. judge.function=my_module.my_reward"
            )
        locate_target("judge.function", function)


def _as_node(judge_cfg) -> DictConfig | None:
    """The section as a DictConfig (a schema dataclass or a dict also do, in tests and scripts)."""
    if judge_cfg is None or isinstance(judge_cfg, DictConfig):
        return judge_cfg
    return OmegaConf.structured(judge_cfg)


__all__ = [
    "Judge",
    "JudgeScores",
    "build_judge",
    "check_judge_config",
    "judge_label",
    "paired",
    "score_completions",
    "ties",
]
