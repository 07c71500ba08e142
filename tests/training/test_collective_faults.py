"""A fault seen on one rank stops every rank: the NaN guard's and the online loop's decisions go
through the strategy's `reduce_boolean_decision`, so no rank raises while the others wait in a
collective (DDP's gradient all-reduce, FSDP's all-gathers) forever."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from prefopt.training.faults import NonFiniteError, NonFiniteGuard


class OtherRankSays:
    """A strategy of 2 ranks whose other rank found `other` (True: finite / not empty)."""

    def __init__(self, other: bool):
        self.other, self.asked = other, []

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        self.asked.append((decision, all))
        return (decision and self.other) if all else (decision or self.other)


def trainer(strategy) -> SimpleNamespace:
    return SimpleNamespace(strategy=strategy, global_step=3, current_epoch=0, precision="32-true")


def test_a_finite_loss_here_stops_when_another_rank_s_is_not():
    strategy = OtherRankSays(other=False)
    with pytest.raises(NonFiniteError, match="non-finite loss .*another rank.* at step 3"):
        NonFiniteGuard({"optim.lr": 1e-3}).on_before_backward(
            trainer(strategy), None, torch.tensor(0.5)
        )
    assert strategy.asked == [(True, True)]


def test_finite_everywhere_goes_on():
    strategy = OtherRankSays(other=True)
    NonFiniteGuard({}).on_before_backward(trainer(strategy), None, torch.tensor(0.5))
    assert strategy.asked == [(True, True)]


def test_gradients_are_decided_together_even_on_a_rank_without_any():
    """FSDP shards gradients: a rank may hold none, and still takes part in the decision."""
    module = torch.nn.Linear(2, 1)  # no .grad yet
    strategy = OtherRankSays(other=False)
    with pytest.raises(NonFiniteError, match="non-finite gradient norm"):
        NonFiniteGuard({}).on_before_optimizer_step(trainer(strategy), module, None)
    assert strategy.asked == [(True, True)]


def online_module(batches_here: list[list[list[int]]], strategy):
    """An `OnlineDataModule` whose rounds give `batches_here[i]` on this rank (i-th try)."""
    from prefopt.online.datamodule import OnlineDataModule

    made = iter(batches_here)
    module = SimpleNamespace(policy=None, device="cpu")
    dm = OnlineDataModule.__new__(OnlineDataModule)
    dm.cfg = SimpleNamespace(steps_per_round=1, prompts_per_round=2, seed=0)
    dm.prompt_set, dm.history, dm.round = [[1, 2], [3, 4]], [], None
    dm.prompt_originals = ["a b", "c d"]
    dm.maker = SimpleNamespace(
        make=lambda index, *_, **__: SimpleNamespace(index=index, batches=next(made), metrics={})
    )
    dm.trainer = SimpleNamespace(
        lightning_module=module, global_rank=0, world_size=2, accumulate_grad_batches=1,
        strategy=strategy, global_step=0, logger=None, is_global_zero=True,
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
    )  # fmt: skip
    return dm


def test_a_round_empty_on_another_rank_is_skipped_here_too():
    """This rank has pairs in round 0, the other has none: both go on to round 1 together."""
    from prefopt.online.datamodule import OnlineDataModule

    strategy = OtherRankSays(other=False)
    dm = online_module([[[0]], [[1]]], strategy)
    decisions = iter([False, True])  # the other rank: empty in round 0, not in round 1
    strategy.reduce_boolean_decision = lambda decision, all=True: decision and next(decisions)
    OnlineDataModule._next_round(dm, 0)
    assert dm.round.index == 1


def test_empty_rounds_on_another_rank_stop_every_rank():
    from prefopt.errors import PrefoptError
    from prefopt.online.datamodule import EMPTY_ROUNDS_ALLOWED, OnlineDataModule

    strategy = OtherRankSays(other=False)
    dm = online_module([[[0]]] * EMPTY_ROUNDS_ALLOWED, strategy)
    with pytest.raises(PrefoptError, match="rounds in a row gave no training pairs"):
        OnlineDataModule._next_round(dm, 0)
    assert strategy.asked == [(True, True)] * EMPTY_ROUNDS_ALLOWED
