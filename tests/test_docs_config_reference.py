"""The configuration reference page is generated from the schemas; these check the generator.

It parses the schema files with `ast` (never imports them), so the docs build cannot drift from
the code and needs none of prefopt's dependencies.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_hook():
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "docs" / "_hooks" / "config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dataclass_fields(path: Path) -> dict[str, list[str]]:
    """Every non-ClassVar annotated field of every class in `path`, by class name."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef):
            found[node.name] = [
                stmt.target.id
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and not ast.unparse(stmt.annotation).startswith("ClassVar")
            ]
    return found


def test_every_schema_field_and_loss_hyperparameter_is_on_the_page():
    page = load_hook().render()
    schema_fields = dataclass_fields(ROOT / "src" / "prefopt" / "config" / "schema.py")
    for name in schema_fields["DataConfig"]:
        assert f"`data.{name}`" in page
    for name in schema_fields["LoraConfig"]:
        assert f"`model.lora.{name}`" in page
    eval_fields = dataclass_fields(ROOT / "src" / "prefopt" / "config" / "eval_schema.py")
    for name in set(eval_fields["EvalConfig"]) - {"diagnostics"}:  # a table of its own
        assert f"`eval.{name}`" in page
    for name in eval_fields["DiagnosticsConfig"]:
        assert f"`eval.diagnostics.{name}`" in page
    trl_losses = "hinge robust bco_pair exo_pair nca_pair sppo_hard aot aot_unpaired"
    trl_losses += " apo_zero apo_down discopop sigmoid_norm"
    for loss in ("dpo", "ipo", "simpo", "kto", *trl_losses.split()):
        assert f"### `loss={loss}`" in page
    assert "`loss.beta`" in page and "`loss.gamma_beta_ratio`" in page
    judge_schemas = dataclass_fields(ROOT / "src" / "prefopt" / "config" / "judges_schema.py")
    for option in ("toy", "reward_model", "python", "none"):
        assert f"### `judge={option}`" in page
    for name in judge_schemas["RewardModelJudgeConfig"]:
        assert f"`judge.{name}`" in page
    assert "`judge.function`" in page


def test_enums_targets_and_docstrings_as_written(tmp_path):
    schema = tmp_path / "schema.py"
    # An Enum through a base class defined in a sibling module, as a choices module would hold.
    (tmp_path / "choices.py").write_text(
        """
from enum import Enum

class Choice(str, Enum):
    def __str__(self):
        return self.value

class Scheduler(Choice):
    constant = "constant"
    cosine = "cosine"
"""
    )
    schema.write_text(
        '''
from dataclasses import dataclass, field
from choices import Scheduler

def default_optimizer():
    return {"_target_": "torch.optim.AdamW", "lr": "${..lr}"}

@dataclass
class OptimConfig:
    _target_: str = "torch.optim.AdamW"
    scheduler: Scheduler = Scheduler.cosine
    """After warm-up | the schedule."""
    betas: tuple[float, float] = (0.9, 0.999)
    extra: dict[str, str] = field(default_factory=dict)
    optimizer: dict = field(default_factory=default_optimizer)

@dataclass
class Config:
    optim: OptimConfig = MISSING
    seed: int = 0
    """Global seed."""
'''
    )
    (tmp_path / "conf" / "optim").mkdir(parents=True)
    (tmp_path / "conf" / "optim" / "adamw.yaml").write_text("lr: 1\n")
    losses = tmp_path / "losses"
    losses.mkdir()
    page = load_hook().render(schema, losses, tmp_path / "conf")
    lines = page.splitlines()
    assert "| `seed` | `int` | `0` | Global seed. |" in lines
    assert "| `optim._target_` | `str` | `'torch.optim.AdamW'` |  |" in lines
    assert (
        "| `optim.scheduler` | `Scheduler` (one of `constant`, `cosine`) "
        "| `cosine` | After warm-up \\| the schedule. |"
    ) in lines
    assert "| `optim.extra` | `dict[str, str]` | `{}` |  |" in lines
    assert "| `optim.optimizer` | `dict` | `{_target_: torch.optim.AdamW, …}` |  |" in lines
    assert "Options (`conf/optim/`): `optim=adamw`." in lines
