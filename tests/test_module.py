"""PreferenceModule: the reference stays frozen, is really used, and never trains."""

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from prefopt.config.schema import OptimConfig
from prefopt.losses import DPOLoss
from prefopt.reference.online import OnlineReference
from prefopt.training.module import PreferenceModule
from prefopt.training.optimizers import lr_schedule

from .conftest import hand_batch, quiet_trainer


def make_module(tiny_model_factory, reference_seed=0):
    policy = tiny_model_factory(seed=0)
    reference = OnlineReference(tiny_model_factory(seed=reference_seed))
    return PreferenceModule(policy, DPOLoss(beta=0.1), OptimConfig(lr=1e-2), reference=reference)


def test_reference_is_frozen_and_outside_params_and_checkpoints(tiny_model_factory):
    module = make_module(tiny_model_factory)
    ref = module.reference.model
    assert not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    assert not any(k.startswith("reference") for k in module.state_dict())
    own = {id(p) for p in module.parameters()}
    assert not any(id(p) in own for p in ref.parameters())


def test_training_moves_the_policy_and_never_the_reference(tiny_model_factory, tmp_path):
    module = make_module(tiny_model_factory)
    ref_before = copy.deepcopy(module.reference.model.state_dict())
    policy_before = copy.deepcopy(module.policy.state_dict())
    loader = DataLoader([hand_batch()] * 6, batch_size=None)
    trainer = quiet_trainer(tmp_path)
    trainer.fit(module, train_dataloaders=loader)

    for name, value in module.reference.model.state_dict().items():
        torch.testing.assert_close(value, ref_before[name], rtol=0, atol=0)
    assert all(p.grad is None for p in module.reference.model.parameters())
    assert not module.reference.model.training
    assert module.reference.forward_calls == 6
    changed = [not torch.equal(v, policy_before[k]) for k, v in module.policy.state_dict().items()]
    assert any(changed)
    optimizer_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimizer_params == {id(p) for p in module.policy.parameters()}


def test_reference_logps_are_really_used(tiny_model_factory):
    """Same policy, a different reference: the loss must change. And with reference = policy
    at initialisation every implicit reward is exactly 0, so the loss is log 2."""
    batch = hand_batch()
    same = make_module(tiny_model_factory, reference_seed=0).eval()
    other = make_module(tiny_model_factory, reference_seed=1).eval()
    with torch.no_grad():
        loss_same = same.compute_loss(batch)
        loss_other = other.compute_loss(batch)
    assert loss_same.loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)
    assert torch.all(loss_same.metrics["rewards/margins"] == 0)
    assert abs(loss_other.loss.item() - loss_same.loss.item()) > 1e-4


def test_missing_reference_is_an_error(tiny_model_factory):
    with pytest.raises(ValueError, match="needs a reference"):
        PreferenceModule(tiny_model_factory(), DPOLoss(), OptimConfig(lr=1e-3), reference=None)


def test_a_bare_model_as_reference_is_an_error(tiny_model_factory):
    """The module never wraps models itself: the reference comes built (`build_reference`)."""
    with pytest.raises(TypeError, match="OnlineReference"):
        PreferenceModule(
            tiny_model_factory(), DPOLoss(), OptimConfig(lr=1e-3), reference=tiny_model_factory()
        )


def test_lr_schedule_warms_up_then_decays():
    linear = lr_schedule("linear", total_steps=10, warmup_steps=2)
    assert [round(linear(s), 4) for s in (0, 1, 2, 6, 10)] == [0.3333, 0.6667, 1.0, 0.5, 0.0]
    assert lr_schedule("constant", 10, 0)(9) == 1.0
    assert lr_schedule("cosine", 10, 0)(5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="optim.scheduler"):
        lr_schedule("step", 10, 0)
