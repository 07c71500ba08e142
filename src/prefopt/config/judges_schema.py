"""The `judge` config group: one schema per built-in judge, and the old spellings it replaced.

`judge=toy|reward_model|python|none` picks a `conf/judge/<name>.yaml`, a `_target_` node with
its arguments that extends one of these schemas, so a misspelled argument fails when Hydra
composes. Evaluation and the online loop read the same `cfg.judge` (`prefopt.judges.build_judge`).
A judge of one's own is a `conf/judge/<name>.yaml` without a schema: `_target_` and its
arguments, checked against the class's signature before the run starts (`config/targets.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from prefopt.config.choices import ModelDtype


@dataclass
class ToyJudgeConfig:
    """The toy world's ground-truth reward of the completion; steps aside (no judge, with a
    warning) on data other than the toy world's."""

    _target_: str = "prefopt.judges.toy.ToyJudge"


@dataclass
class RewardModelJudgeConfig:
    """A local Hugging Face sequence-classification checkpoint with one output, read through
    its own tokenizer and chat template."""

    _target_: str = "prefopt.judges.reward_model.RewardModelJudge"
    path: str = MISSING
    """The reward model: a folder written by `save_pretrained` (model and tokenizer) or a hub id."""
    batch_size: int = 8
    """Exchanges per forward pass of the reward model."""
    max_length: int | None = None
    """Tokens of a rendered exchange the reward model reads (longer ones keep their start);
    null = the tokenizer's `model_max_length`."""
    dtype: ModelDtype = "${oc.select:model.dtype,float32}"  # type: ignore[assignment]
    """Weights dtype; by default the policy's `model.dtype`."""
    trust_remote_code: bool = "${oc.select:model.trust_remote_code,false}"  # type: ignore[assignment]
    """Run code shipped with a hub checkpoint; by default the policy's `model.trust_remote_code`."""


@dataclass
class LearnedToyJudgeConfig:
    """The toy world's learned reward model (a Bradley–Terry model of its noisy training
    pairs, trained on first use and cached): the proxy reward RLHF would optimise."""

    _target_: str = "prefopt.reward.learned_toy.LearnedToyJudge"
    toy: Any = "${toy}"
    """The toy world it learns from: the run's `toy` section."""
    batch_size: int = 64
    """Exchanges per forward pass of the reward model."""


@dataclass
class PythonJudgeConfig:
    """A function `(prompts: list[str], completions: list[str]) -> list[float]`."""

    _target_: str = "prefopt.judges.python.PythonJudge"
    function: str = MISSING
    """Its dotted path, e.g. `my_module.my_reward` (importable: on `PYTHONPATH` or installed)."""


@dataclass
class NoJudgeConfig:
    """No judge: evaluation logs KL and lengths only."""

    _target_: str | None = None


JUDGE_SCHEMAS: dict[str, type] = {
    "toy": ToyJudgeConfig,
    "reward_model": RewardModelJudgeConfig,
    "learned_toy": LearnedToyJudgeConfig,
    "python": PythonJudgeConfig,
    "none": NoJudgeConfig,
}
"""`conf/judge/<name>.yaml` extends `<name>_judge_schema`."""


def register_judge_schemas(cs: ConfigStore) -> None:
    for name, schema in JUDGE_SCHEMAS.items():
        cs.store(group="judge", name=f"{name}_judge_schema", node=schema)


def judge_label(node) -> str:
    """A judge's short name for params and logs: `toy`, `reward_model`, `python:<function>`,
    `none`, or the `_target_` of a judge of one's own."""
    target = node.get("_target_") if node is not None else None
    if target is None:
        return "none"
    for name, schema in JUDGE_SCHEMAS.items():
        if target == schema._target_:
            return f"python:{node.get('function')}" if name == "python" else name
    return str(target)


def old_judge_spellings(args: list[str]) -> str | None:
    """The fix for command-line arguments that still select the judge under `eval`, as one
    line giving the new spelling of them all together, or None when there are none.

    `eval=reward_model eval.judge_path=X` is `judge=reward_model judge.path=X`; `eval=toy` and
    `eval=none` are `judge=toy` and `judge=none`; `eval.judge=X` is `judge=X`; a judge added
    under `eval.judges` is a `conf/judge/<name>.yaml`.
    """
    old: list[str] = []
    new: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep:
            continue
        if key == "eval" and set(value.split(",")) & {"toy", "reward_model", "none"}:
            old.append(arg)
            new.append(f"judge={value}")
        elif key == "eval.judge":
            old.append(arg)
            new.append(f"judge={value}")
        elif key == "eval.judge_path":
            old.append(arg)
            new.append(f"judge.path={value}")
        elif key.startswith("eval.judges"):
            old.append(arg)
            new.append("judge._target_=… (or a conf/judge/<name>.yaml: _target_ and its arguments)")
    if not old:
        return None
    if any(n.startswith("judge.path=") for n in new) and not any(
        n.startswith("judge=") for n in new
    ):
        new.insert(0, "judge=reward_model")
    return f"{' '.join(old)}: the judge is its own config group now: {' '.join(new)}"
