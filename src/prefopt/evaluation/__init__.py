"""Evaluation that shows alignment happened: generations judged against the reference, KL,
and the seed's diagnostics, as Lightning callbacks configured by the `eval` config group. The
judge is the `judge` group's (`prefopt.judges`), built by the caller and handed in."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L

from prefopt.config.eval_schema import check_eval_config  # noqa: F401 (re-exported)
from prefopt.config.schema import EvalConfig, ModelConfig
from prefopt.evaluation.callback import GenerationEvalCallback
from prefopt.evaluation.diagnostics import DiagnosticsCallback
from prefopt.evaluation.metrics import sequence_kl, win_rate
from prefopt.judges import Judge
from prefopt.losses.base import PreferenceLoss
from prefopt.reference import SamplingModel


def build_callbacks(
    eval_cfg: EvalConfig,
    model_cfg: ModelConfig,
    judge: Judge | None,
    loss: PreferenceLoss,
    tokenizer,
    reference_model: SamplingModel,
    true_reward: Callable[[str], float] | None = None,
) -> list[L.Callback]:
    """The evaluation and diagnostics callbacks the `eval` section (`eval_cfg`) asks for.

    `judge`: `prefopt.judges.build_judge(cfg.judge, ...)`'s, or None (no reward, no win rate).
    `reference_model`: π_ref as a model, the training reference's `sampling_model`, or for a
    reference-free loss `prefopt.reference.build_sampling_model`'s (see `GenerationEvalCallback`).
    `true_reward`: the world's ground-truth reward of a completion's text, where it has one (the
    toy world's): evaluation then logs its verdict (`eval/true/...`) beside the judge's.
    """
    callbacks: list[L.Callback] = []
    if eval_cfg.diagnostics.enabled:
        callbacks.append(DiagnosticsCallback(eval_cfg.diagnostics, loss, seed=eval_cfg.seed))
    if eval_cfg.num_prompts > 0:
        chunk_size = model_cfg.logits_chunk_size or None
        callbacks.append(
            GenerationEvalCallback(
                eval_cfg, tokenizer, judge, reference_model, chunk_size, true_reward
            )
        )
    return callbacks


__all__ = [
    "DiagnosticsCallback",
    "GenerationEvalCallback",
    "build_callbacks",
    "check_eval_config",
    "sequence_kl",
    "win_rate",
]
