"""Evaluation that shows alignment happened: generations judged against the reference, KL,
and the seed's diagnostics, as Lightning callbacks configured by the `eval` config group."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch import nn

from prefopt.errors import PrefoptError
from prefopt.evaluation.callback import GenerationEvalCallback
from prefopt.evaluation.diagnostics import DiagnosticsCallback
from prefopt.evaluation.judges import (
    Judge,
    RewardModelJudge,
    ToyJudge,
    build_judge,
    check_judge_choice,
)
from prefopt.evaluation.metrics import sequence_kl, win_rate
from prefopt.losses.base import PreferenceLoss


def check_eval_config(cfg) -> None:
    """Fail at start, before anything loads, on an `eval` section that cannot work."""
    check_judge_choice(cfg)
    for key, value, low in (
        ("num_prompts", cfg.num_prompts, 0),
        ("temperature", cfg.temperature, 0),
        ("max_new_tokens", cfg.max_new_tokens, 1),
        ("batch_size", cfg.batch_size, 1),
        ("every_n_steps", cfg.every_n_steps, 0),
        ("diagnostics.margin_window", cfg.diagnostics.margin_window, 2),
    ):
        if value < low:
            raise PrefoptError(f"eval.{key}={value}: it must be >= {low}")


def build_callbacks(
    cfg,
    loss: PreferenceLoss,
    tokenizer,
    load_reference: Callable[[], nn.Module],
) -> list[L.Callback]:
    """The evaluation and diagnostics callbacks `cfg.eval` asks for.

    `load_reference` loads the reference model. Evaluation calls it only when training holds no
    reference model and `model.reference_path` names one other than the initial policy; else it
    uses training's reference or a copy of the initial policy (see `GenerationEvalCallback`).
    """
    callbacks: list[L.Callback] = []
    if cfg.eval.diagnostics.enabled:
        callbacks.append(DiagnosticsCallback(cfg.eval.diagnostics, loss, seed=cfg.eval.seed))
    if cfg.eval.num_prompts > 0:
        judge = build_judge(cfg.eval, cfg.data.source == "toy")
        chunk_size = cfg.model.get("logits_chunk_size", None) or None
        callbacks.append(
            GenerationEvalCallback(
                cfg.eval,
                tokenizer,
                judge,
                load_reference if cfg.model.reference_path else None,
                chunk_size,
            )
        )
    return callbacks


__all__ = [
    "DiagnosticsCallback",
    "GenerationEvalCallback",
    "Judge",
    "RewardModelJudge",
    "ToyJudge",
    "build_callbacks",
    "check_eval_config",
    "build_judge",
    "sequence_kl",
    "win_rate",
]
