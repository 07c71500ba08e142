"""The `eval` config group: generation-based evaluation and the diagnostics (`conf/eval/`).

The judge it uses is the `judge` group's (`config/judges_schema.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefopt.errors import PrefoptError


@dataclass
class DiagnosticsConfig:
    """The seed's failure modes, checked during the run and reported as warnings, metrics, tags."""

    enabled: bool = True
    margin_window: int = 3
    """K: warn when `val/rewards/margins` rose by no more than `margin_min_increase` over the
    last K validations (the reference is mismatched with the data, or β is off)."""
    margin_min_increase: float = 1e-3
    collapse_logp: float = -5.0
    """A chosen completion whose mean per-token log-prob under the reference is below this
    (nats; -5 = perplexity 148) counts as nearly impossible for the reference."""
    collapse_max_share: float = 0.25
    """Warn before training when more than this share of chosen completions is below `collapse_logp`."""
    collapse_sample: int = 256
    """Chosen completions (a seeded sample of the training data) scored for that check."""


@dataclass
class EvalConfig:
    """Generation-based evaluation: sample from policy and reference on held-out prompts, judge
    both with the `judge` section's judge, and log win rate, rewards, KL and a table of
    generations (`conf/eval/`)."""

    num_prompts: int = 64
    """Held-out prompts (a seeded sample of the validation prompts); 0 = no generation eval."""
    every_n_steps: int = 0
    """Evaluate at the first validation at least this many steps after the last evaluation;
    0 = at every validation. Always once more at the end of training."""
    temperature: float = 1.0
    """Sampling temperature; 1 samples the policy itself (what `eval/kl_seq` assumes), 0 = greedy."""
    max_new_tokens: int = 32
    batch_size: int = 32
    """Prompts per generate / scoring call, and per judge call of the policy's completions."""
    seed: int = 0
    """Seed of the prompt choice and of sampling (the same at every evaluation)."""
    table_rows: int = 16
    """Generations per evaluation written to the `eval/generations.json` table."""
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)


def check_eval_config(cfg) -> None:
    """Fail at start, before anything loads, on an `eval` section that cannot work."""
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
