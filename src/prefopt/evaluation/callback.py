"""`GenerationEvalCallback`: does the policy now write better completions than the reference?

At validation end (every `eval.every_n_steps`) and once more at the end of training, the
policy and the reference complete the same held-out prompts; a judge scores both, and MLflow
gets

- `eval/win_rate_vs_ref`: share of prompts where the policy's completion scores higher (ties 1/2),
  over the prompts where the judge scored both completions,
- `eval/reward_policy`, `eval/reward_ref`: mean judge scores (of the completions it scored),
- `eval/ties`: prompts where both completions got the same score,
- `eval/judge_failures`: completions compared at this evaluation (the policy's and the
  reference's) that the judge gave no usable score (`prefopt.judges.scores`),
- `eval/kl_seq`: mean over the policy's samples of log π(y|x) − log π_ref(y|x),
- `eval/length_policy` (and `eval/length_ref`): completion tokens, EOS not counted,
- `eval/generations.json`: a table (prompt, policy, reference, their rewards) per evaluation.

Where the world has a ground-truth reward (the toy world: `true_reward`), the same samples are
also scored by it, whatever the judge (a reward model, a function, none):
`eval/true/win_rate_vs_ref`, `eval/true/reward_policy` and `eval/true/reward_ref`. A policy
optimised against a proxy is so measured against the truth: over-optimisation shows as the
judge's numbers rising while the true ones stall or fall. With `judge=toy` they equal the
judge's. `eval/kl_seq` is the sequence-level KL the DPO paper's frontier plots against the true
reward (summed over each completion's tokens, on held-out prompts, samples at `eval.temperature`,
1 by default, with no top-k or top-p).

The judge reads each prompt as the data wrote it (text, or the conversation's messages), not
text decoded from the policy's chat-templated ids (`prefopt.data.original_prompts`).

The reference never changes, so its samples and rewards are computed at the first evaluation
and reused. π_ref for evaluation comes from the reference's `SamplingModel`
(`prefopt.reference.base`): the model training runs online as its reference; else, when
`model.reference_path` is unset (the reference IS the initial policy), a frozen copy of the
policy taken in `setup`, before the first step and before Lightning moves it to the
accelerator; else the `model.reference_path` checkpoint, loaded at the first evaluation.
A copy or a loaded model stays on the CPU between evaluations. So cached reference log-probs
still spare training the reference's load and forwards, and reference-free losses (SimPO)
are measured against the same baseline as the others: runs of a sweep across losses compare.
Evaluation runs on global rank 0 only.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from prefopt.config.schema import EvalConfig
from prefopt.data.original_prompts import display_text, originals_of
from prefopt.evaluation.generation import (
    Samples,
    decode_completions,
    generate,
    score,
    stop_token_ids,
)
from prefopt.evaluation.metrics import mean, sequence_kl, win_rate
from prefopt.judges import Judge, JudgeScores, paired, score_completions, ties
from prefopt.reference import SamplingModel
from prefopt.tracking import log_table

log = logging.getLogger("prefopt.evaluation")

TABLE_FILE = "eval/generations.json"


class GenerationEvalCallback(L.Callback):
    def __init__(
        self,
        cfg: EvalConfig,
        tokenizer,
        judge: Judge | None,
        reference_model: SamplingModel | None = None,
        chunk_size: int | None = None,
        true_reward: Callable[[str], float] | None = None,
    ):
        """`reference_model`: π_ref as a model, the training reference's `sampling_model` (or,
        for a reference-free loss, `build_sampling_model`'s); None = the reference is the
        initial policy, copied in `setup`. `true_reward`: the world's ground-truth reward of a
        completion's text, where it has one (the toy world's `prefopt.toy.reward`)."""
        self.cfg = cfg
        self.true_reward = true_reward
        self.tokenizer = tokenizer
        self.judge = judge
        self.reference_model = reference_model or SamplingModel()
        self.chunk_size = chunk_size
        self.prompts: list[list[int]] = []
        self.original_prompts: list = []
        """The prompts as written (text or messages): what the judge reads."""
        self.prompt_texts: list[str] = []
        self.stop_ids: list[int] = []
        self.reference_samples: Samples | None = None
        self.reference_rewards: JudgeScores | None = None
        self.reference_true_rewards: list[float] | None = None
        self.last_step: int | None = None
        self.history: list[dict[str, float]] = []
        """The metrics of each evaluation, in order."""

    # --- Lightning hooks -------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.reference_model.is_initial_policy:
            return
        if not trainer.is_global_zero:
            return  # evaluation runs on rank 0 only
        if self.cfg.num_prompts > 0:
            # Still on the CPU here: the copy never takes accelerator memory outside evaluation.
            self.reference_model.keep_initial_policy(pl_module.policy)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        examples = trainer.datamodule.val_examples if trainer.datamodule else None
        self.prompts = select_prompts(examples or [], self.cfg.num_prompts, self.cfg.seed)
        if not self.prompts:
            log.warning("eval: no validation prompts, so no generation-based evaluation")
        self.original_prompts = originals_of(
            self.prompts, examples or [], lambda e: e["prompt_input_ids"], self.tokenizer
        )
        self.prompt_texts = [display_text(prompt) for prompt in self.original_prompts]
        self.stop_ids = stop_token_ids(self.tokenizer, pl_module.policy)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        every = self.cfg.every_n_steps
        if self.last_step is not None and trainer.global_step - self.last_step < max(every, 1):
            return
        self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last_step != trainer.global_step:
            self.evaluate(trainer, pl_module)

    # --- evaluation ------------------------------------------------------------------------

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        self.last_step = trainer.global_step
        if not self.prompts or not trainer.is_global_zero:
            return {}
        start = time.perf_counter()
        device = pl_module.device
        with self.reference_model.on(device) as reference:
            if self.reference_samples is None:
                self.reference_samples = self._sample(reference, device)
                self.reference_rewards = self._judge(self.reference_samples, device)
            policy_samples = self._sample(pl_module.policy, device)
            policy_rewards = self._judge(policy_samples, device)
            kl = self._kl(pl_module.policy, reference, policy_samples, device)

        metrics = {
            "eval/kl_seq": kl,
            "eval/length_policy": mean(policy_samples.lengths(self.stop_ids)),
            "eval/length_ref": mean(self.reference_samples.lengths(self.stop_ids)),
        }
        if policy_rewards is not None:
            policy_scored, reference_scored = paired(policy_rewards, self.reference_rewards)
            if policy_scored:
                metrics["eval/win_rate_vs_ref"] = win_rate(policy_scored, reference_scored)
            metrics["eval/reward_policy"] = mean(policy_rewards.valid)
            metrics["eval/reward_ref"] = mean(self.reference_rewards.valid)
            metrics["eval/ties"] = float(ties(policy_rewards, self.reference_rewards))
            failures = policy_rewards.failures + self.reference_rewards.failures
            metrics["eval/judge_failures"] = float(failures)
        if self.true_reward is not None:
            metrics.update(self._true_verdict(policy_samples))
        self.history.append({"step": float(trainer.global_step), **metrics})
        self._log(trainer, metrics, policy_samples, policy_rewards)
        log.info(
            "eval at step %d (%d prompts, %.1f s): %s",
            trainer.global_step,
            len(self.prompts),
            time.perf_counter() - start,
            ", ".join(f"{k.removeprefix('eval/')}={v:.3f}" for k, v in metrics.items()),
        )
        return metrics

    def _sample(self, model: nn.Module, device: torch.device) -> Samples:
        ids = generate(
            model,
            self.prompts,
            pad_token_id=self.tokenizer.pad_token_id,
            stop_ids=self.stop_ids,
            max_new_tokens=self.cfg.max_new_tokens,
            temperature=self.cfg.temperature,
            seed=self.cfg.seed,
            batch_size=self.cfg.batch_size,
            device=device,
        )
        return Samples(ids, decode_completions(self.tokenizer, self.prompts, ids))

    def _judge(self, samples: Samples, device: torch.device) -> JudgeScores | None:
        if self.judge is None:
            return None
        return score_completions(
            self.judge, self.original_prompts, samples.texts, device, self.cfg.batch_size
        )

    def _true_verdict(self, policy_samples: Samples) -> dict[str, float]:
        """What the ground-truth reward says of the same samples the judge scored."""
        if self.reference_true_rewards is None:
            self.reference_true_rewards = self._true_rewards(self.reference_samples)
        policy_true = self._true_rewards(policy_samples)
        return {
            "eval/true/win_rate_vs_ref": win_rate(policy_true, self.reference_true_rewards),
            "eval/true/reward_policy": mean(policy_true),
            "eval/true/reward_ref": mean(self.reference_true_rewards),
        }

    def _true_rewards(self, samples: Samples) -> list[float]:
        return [float(self.true_reward(text)) for text in samples.texts]

    def _kl(self, policy, reference, samples: Samples, device: torch.device) -> float:
        kwargs = dict(
            pad_token_id=self.tokenizer.pad_token_id,
            batch_size=self.cfg.batch_size,
            device=device,
            chunk_size=self.chunk_size,
        )
        policy_logps = score(policy, self.prompts, samples.completion_ids, **kwargs)
        reference_logps = score(reference, self.prompts, samples.completion_ids, **kwargs)
        return sequence_kl(policy_logps, reference_logps)

    def _log(self, trainer, metrics, policy_samples: Samples, policy_rewards) -> None:
        step = trainer.global_step
        for name, value in metrics.items():
            trainer.callback_metrics[name] = torch.tensor(value)
        logger = trainer.logger
        if logger is None:
            return
        logger.log_metrics(metrics, step=step)
        n = min(self.cfg.table_rows, len(self.prompts))
        table = {
            "step": [step] * n,
            "prompt": self.prompt_texts[:n],
            "policy": policy_samples.texts[:n],
            "reference": self.reference_samples.texts[:n],
        }
        if policy_rewards is not None:
            table["reward_policy"] = policy_rewards.scores[:n]
            table["reward_ref"] = self.reference_rewards.scores[:n]
        log_table(logger, table, TABLE_FILE)


def select_prompts(examples: list[dict], count: int, seed: int) -> list[list[int]]:
    """A seeded sample of `count` distinct prompts (as token ids), in their data order."""
    unique: dict[tuple[int, ...], None] = {}
    for example in examples:
        unique.setdefault(tuple(example["prompt_input_ids"]), None)
    prompts = list(unique)
    if count < len(prompts):
        chosen = sorted(random.Random(seed).sample(range(len(prompts)), count))
        prompts = [prompts[i] for i in chosen]
    return [list(p) for p in prompts] if count > 0 else []
