"""A moving reference (TR-DPO, `reference.sync_every_n_steps` / `reference.sync_mix`): the
reference stays frozen unless sync is on; with it on, π_ref ← α·π + (1−α)·π_ref every n
optimizer steps, by hand-worked numbers and on the toy world; the mixed reference survives a
checkpoint; evaluation keeps the initial reference; bad settings fail in one line."""

from __future__ import annotations

import copy
import logging

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from prefopt.config import checks
from prefopt.config.schema import ReferenceConfig
from prefopt.errors import PrefoptError
from prefopt.reference import ReferenceSync, SamplingModel, build_reference_sync
from prefopt.reference.online import OnlineReference
from prefopt.reference.sync import check_sync, mix_into
from prefopt.train import train
from prefopt.training.checkpoint import LAST, ResumeCheckpoint

from .conftest import quiet_trainer, tiny_llama
from .numerics import assert_close_f32

# ---------------------------------------------------------------------------------------------
# Hand-worked numbers


class OneWeight(L.LightningModule):
    """π_θ = one weight w, trained by SGD (lr 0.5) on the loss w: each step takes 0.5 off."""

    def __init__(self, w: float):
        super().__init__()
        self.policy = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.policy.weight.fill_(w)

    def training_step(self, batch, batch_idx):
        return self.policy.weight.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.policy.parameters(), lr=0.5)

    def train_dataloader(self):
        return DataLoader(torch.zeros(8, 1), batch_size=1)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_soft_sync_every_two_steps_by_hand(tmp_path, accumulate):
    """w starts at 1 in both models; α = 0.5, every 2 optimizer steps.
    step 1: w = 0.5;  step 2: w = 0.0, π_ref = 0.5·0.0 + 0.5·1.0 = 0.5
    step 3: w = -0.5; step 4: w = -1.0, π_ref = 0.5·(-1.0) + 0.5·0.5 = -0.25
    With gradient accumulation over 2 batches the same holds per optimizer step (the sync
    happens once, after the batch that steps)."""
    module = OneWeight(1.0)
    reference = copy.deepcopy(module.policy).requires_grad_(False)
    sync = ReferenceSync(reference, every_n_steps=2, mix=0.5)
    seen = []

    class Watch(L.Callback):  # runs after the sync: the reference as the next step finds it
        def on_train_batch_end(self, trainer, *args):
            seen.append((trainer.global_step, reference.weight.item()))

    trainer = quiet_trainer(
        tmp_path, max_steps=4, callbacks=[sync, Watch()], accumulate_grad_batches=accumulate
    )
    trainer.fit(module)

    assert module.policy.weight.item() == -1.0
    assert reference.weight.item() == -0.25
    assert sync.sync_count == 2 and sync.synced_step == 4
    by_step = dict(seen)  # the last value seen at each step
    first_batch = {0: 1.0} if accumulate == 2 else {}  # a batch that does not step
    assert by_step == {**first_batch, 1: 1.0, 2: 0.5, 3: 0.5, 4: -0.25}
    assert len(seen) == 4 * accumulate
    assert [sync.next_sync_step(s) for s in (0, 1, 2, 3)] == [2, 2, 4, 4]


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("saved_at", "sync_first"), [(3, True), (2, True), (2, False)], ids=["step3", "step2", "late"]
)
def test_the_synced_reference_resumes_from_a_checkpoint_by_hand(tmp_path, saved_at, sync_first):
    """As above (α = 0.5, every 2 steps), resumed from the checkpoint of step 3 (or 2) into
    fresh models (w = 1, π_ref = 1): the checkpoint brings back π_ref = 0.5, so step 4 gives
    π_ref = 0.5·(-1.0) + 0.5·0.5 = -0.25 as without the stop (from the initial π_ref = 1 it
    would be 0.5·(-1.0) + 0.5·1.0 = 0). "late": the checkpoint callback runs before the sync,
    so step 2's checkpoint holds π_ref = 1 and the resumed run does step 2's sync first, from
    the checkpointed w = 0."""
    ckpt_dir = tmp_path / "checkpoints"

    def fit(max_steps: int, ckpt_path=None) -> tuple[OneWeight, ReferenceSync]:
        module = OneWeight(1.0)
        sync = ReferenceSync(copy.deepcopy(module.policy).requires_grad_(False), 2, mix=0.5)
        saver = ResumeCheckpoint(ckpt_dir, every_n_steps=saved_at)
        callbacks = [sync, saver] if sync_first else [saver, sync]
        trainer = quiet_trainer(tmp_path, max_steps=max_steps, callbacks=callbacks)
        trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
        return module, sync

    fit(saved_at)
    assert torch.load(ckpt_dir / LAST, weights_only=True)["global_step"] == saved_at
    module, sync = fit(4, ckpt_dir / LAST)
    assert module.policy.weight.item() == -1.0
    assert sync.reference_model.weight.item() == -0.25
    assert (sync.sync_count, sync.synced_step) == (2, 4)


def test_a_mix_is_computed_in_fp32_and_cast_to_the_reference_dtype():
    """α = 0.25, policy (fp32) W = [[1, 2], [3, 4]], b = [8, -8];
    reference (bf16) W = [[0, 0], [4, -4]], b = [0, 0]:
    0.25·W_π + 0.75·W_ref = [[0.25, 0.5], [0.75 + 3, 1 - 3]] = [[0.25, 0.5], [3.75, -2]],
    0.25·b_π + 0.75·b_ref = [2, -2]; a buffer is copied, not mixed."""
    policy = nn.Linear(2, 2)
    reference = nn.Linear(2, 2).to(torch.bfloat16).requires_grad_(False)
    policy.register_buffer("scale", torch.tensor([3.0]))
    reference.register_buffer("scale", torch.tensor([1.0]))
    with torch.no_grad():
        policy.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        policy.bias.copy_(torch.tensor([8.0, -8.0]))
        reference.weight.copy_(torch.tensor([[0.0, 0.0], [4.0, -4.0]]))
        reference.bias.zero_()

    mix_into(reference, policy, 0.25)

    assert reference.weight.dtype == torch.bfloat16 and not reference.weight.requires_grad
    assert reference.weight.tolist() == [[0.25, 0.5], [3.75, -2.0]]
    assert reference.bias.tolist() == [2.0, -2.0]
    assert reference.scale.tolist() == [3.0]
    assert policy.weight.tolist() == [[1.0, 2.0], [3.0, 4.0]]  # the policy is only read


def test_a_soft_mix_of_bf16_rounds_once_from_fp32():
    """The mix is rounded to bf16 once, from fp32, not computed in bf16: 0.3·π + 0.7·π_ref
    with values bf16 cannot hold exactly equals the fp32 result cast to bf16."""
    torch.manual_seed(0)
    policy, reference = tiny_llama(seed=3), tiny_llama(seed=4).to(torch.bfloat16)
    before = {n: p.detach().float().clone() for n, p in reference.named_parameters()}
    mix_into(reference, policy, 0.3)
    for name, param in reference.named_parameters():
        source = dict(policy.named_parameters())[name].detach()
        want = (0.3 * source + 0.7 * before[name]).to(torch.bfloat16)
        assert torch.equal(param, want), name


def test_a_reference_of_another_architecture_is_refused_at_start(tmp_path):
    module = OneWeight(1.0)
    sync = ReferenceSync(nn.Linear(2, 1, bias=False), every_n_steps=1)
    with pytest.raises(PrefoptError, match=r"'weight' is \[1, 1\] in the policy, \[1, 2\] in it"):
        quiet_trainer(tmp_path, max_steps=1, callbacks=[sync]).fit(module)


# ---------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["reference.sync_every_n_steps=-1"], "reference.sync_every_n_steps=-1: it must be >= 0"),
        (["reference.sync_mix=0"], r"reference.sync_mix=0.0: it must be in \(0, 1\]"),
        (["reference.sync_mix=1.5"], r"reference.sync_mix=1.5: it must be in \(0, 1\]"),
        (
            ["reference.sync_every_n_steps=4", "model.lora.enabled=true"],
            "with model.lora.enabled: a LoRA policy's reference cannot move",
        ),
        (
            ["reference.sync_every_n_steps=4", "trainer=fsdp"],
            "with trainer.strategy=fsdp: the policy's weights are sharded",
        ),
    ],
)
def test_settings_a_moving_reference_cannot_use_fail_in_one_line(
    compose_config, overrides, message
):
    cfg = compose_config(*overrides)
    with pytest.raises(PrefoptError, match=message) as error:
        checks.check_config(cfg)
    assert "\n" not in str(error.value)


def test_sync_off_by_default_and_a_soft_mix_within_range_passes():
    defaults = OmegaConf.structured(ReferenceConfig)
    assert defaults.sync_every_n_steps == 0 and defaults.sync_mix == 1.0
    model = OmegaConf.create({"lora": {"enabled": True}})  # irrelevant while sync is off
    check_sync(defaults, model, OmegaConf.create({"strategy": "fsdp"}))
    check_sync(
        ReferenceConfig(sync_every_n_steps=1, sync_mix=0.6),
        OmegaConf.create({"lora": {"enabled": False}}),
        OmegaConf.create({"strategy": "ddp"}),
    )


def test_a_reference_free_loss_with_sync_warns_and_moves_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="prefopt.reference"):
        assert build_reference_sync(ReferenceConfig(sync_every_n_steps=2), None) is None
    assert [r.getMessage() for r in caplog.records] == [
        "reference.sync_every_n_steps=2 has no effect: the loss uses no reference "
        "(evaluation still compares with the initial one)"
    ]
    assert build_reference_sync(ReferenceConfig(), OnlineReference(tiny_llama())) is None


def test_a_moving_reference_whose_model_evaluation_shares_is_refused():
    """Evaluation's π_ref must stay the initial one: sync may not move the model it samples."""
    shared = OnlineReference(tiny_llama())
    with pytest.raises(ValueError, match="needs a SamplingModel of its own"):
        build_reference_sync(ReferenceConfig(sync_every_n_steps=2), shared)
    own = OnlineReference(tiny_llama(), sampling_model=SamplingModel())
    sync = build_reference_sync(ReferenceConfig(sync_every_n_steps=2, sync_mix=0.7), own)
    assert (sync.reference_model, sync.every_n_steps, sync.mix) == (own.model, 2, 0.7)


# ---------------------------------------------------------------------------------------------
# On the toy world, with the real Trainer


SHORT = ["eval.num_prompts=0", "export=false", "checkpoint.every_n_steps=0"]


class Snapshots(L.Callback):
    """The policy's and the reference's weights as each training batch starts (keyed by the
    optimizer steps done), at the start of training and at its end."""

    def __init__(self):
        self.policy: dict[int, dict] = {}
        self.reference: dict[int, dict] = {}
        self.at_start: dict | None = None
        self.sync: ReferenceSync | None = None

    @staticmethod
    def weights(model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def _take(self, trainer, pl_module) -> None:
        self.policy[trainer.global_step] = self.weights(pl_module.policy)
        self.reference[trainer.global_step] = self.weights(pl_module.reference.model)

    def on_train_start(self, trainer, pl_module) -> None:
        self.at_start = self.weights(pl_module.reference.model)
        syncs = [c for c in trainer.callbacks if isinstance(c, ReferenceSync)]
        self.sync = syncs[0] if syncs else None

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        self._take(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._take(trainer, pl_module)


def train_watched(cfg, monkeypatch, *extra: L.Callback):
    import prefopt.training.tasks as train_module  # its builders call build_callbacks

    watch = Snapshots()
    build = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda *a: [*build(*a), watch, *extra])
    try:
        return train(cfg), watch
    finally:
        monkeypatch.setattr(train_module, "build_callbacks", build)


def assert_equal_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_without_sync_the_reference_stays_bitwise_frozen(compose_config, monkeypatch):
    cfg = compose_config(*SHORT, "trainer.max_steps=3", "reference.cache=false")
    result, watch = train_watched(cfg, monkeypatch)
    assert watch.sync is None
    assert set(watch.reference) == {0, 1, 2, 3}
    for step in watch.reference:
        assert_equal_weights(watch.reference[step], watch.at_start)
    assert not all(torch.equal(watch.policy[3][n], watch.at_start[n]) for n in watch.at_start)


def test_a_soft_sync_mixes_the_policy_in_every_n_steps_and_eval_keeps_the_initial_one(
    compose_config, monkeypatch, caplog
):
    """α = 0.5 every 2 steps over 4: π_ref(2) = 0.5·π(2) + 0.5·π_ref(0), π_ref(4) =
    0.5·π(4) + 0.5·π_ref(2), and unchanged between. `reference.cache=true` (the default) runs
    the moving reference online. Evaluation's π_ref is a frozen copy of the initial policy."""
    overrides = ["reference.sync_every_n_steps=2", "reference.sync_mix=0.5"]
    cfg = compose_config(*SHORT, "trainer.max_steps=4", "eval.num_prompts=2", *overrides)
    with caplog.at_level(logging.INFO, logger="prefopt.reference"):
        result, watch = train_watched(cfg, monkeypatch)
    assert any("the reference moves, so it runs online" in r.getMessage() for r in caplog.records)
    reference = result.module.reference
    assert isinstance(reference, OnlineReference)
    assert watch.sync.sync_count == 2 and watch.sync.synced_step == 4

    ref, pol = watch.reference, watch.policy
    assert_equal_weights(ref[0], watch.at_start)
    assert_equal_weights(ref[1], watch.at_start)
    for step, before in ((2, 0), (4, 2)):
        for name, value in ref[step].items():
            want = 0.5 * pol[step][name] + 0.5 * ref[before][name]
            assert_close_f32(value, want, ulps=4, msg=name)  # a mix of two: a few roundings
            assert not torch.equal(value, ref[before][name]), name  # it did move
    assert_equal_weights(ref[3], ref[2])

    sampling = reference.sampling_model
    assert sampling.model is not None and sampling.model is not reference.model
    initial_policy = watch.policy[0]
    assert_equal_weights(Snapshots.weights(sampling.model), initial_policy)


def test_a_hard_sync_makes_the_reference_score_as_the_policy(compose_config, monkeypatch):
    overrides = ["reference.sync_every_n_steps=1", "reference.cache=false"]
    cfg = compose_config(*SHORT, "trainer.max_steps=2", *overrides)
    batches = []

    class LastBatch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            batches.append(batch)

    result, watch = train_watched(cfg, monkeypatch, LastBatch())
    module = result.module
    assert_equal_weights(watch.reference[2], watch.policy[2])
    assert not all(torch.equal(watch.reference[2][n], watch.at_start[n]) for n in watch.at_start)
    batch = batches[-1]
    module.policy.eval()
    with torch.no_grad():
        policy_logps = module.packing.logps(module.policy, batch, module.chunk_size)
    reference_logps = module.reference.logps(batch)
    assert_close_f32(reference_logps.summed, policy_logps.summed, tokens=policy_logps.token_counts)


@pytest.mark.slow  # three short trainings (~30 s on 2 busy cores); the hand-worked one is fast
def test_a_resumed_run_goes_on_with_the_checkpointed_reference(
    compose_config, monkeypatch, tmp_path
):
    """Sync every 2 steps (α = 0.6), a checkpoint every 3: the run stopped after step 3 resumes
    with the reference of step 2's sync (not the initial one) and ends with the reference of
    a run that was never stopped."""
    args = [
        "eval.num_prompts=0",
        "export=false",
        "trainer.max_steps=6",
        "checkpoint.every_n_steps=3",
        "reference.sync_every_n_steps=2",
        "reference.sync_mix=0.6",
    ]
    _, whole = train_watched(compose_config(*args, f"output_dir={tmp_path / 'whole'}"), monkeypatch)

    class StopAtStep(L.Callback):
        def on_train_batch_start(self, trainer, *rest):
            if trainer.global_step == 3:
                raise KeyboardInterrupt

    out = tmp_path / "outputs" / "2026-01-01" / "10-00-00"  # as deep as Hydra's, for resume=true
    with pytest.raises(SystemExit):
        train_watched(compose_config(*args, f"output_dir={out}"), monkeypatch, StopAtStep())
    resumed, watch = train_watched(
        compose_config(*args, f"output_dir={out}", "resume=true"), monkeypatch
    )

    assert watch.sync.sync_count == 3 and watch.sync.synced_step == 6
    assert_equal_weights(watch.at_start, whole.reference[3])  # from the checkpoint
    assert not all(torch.equal(watch.at_start[n], whole.at_start[n]) for n in watch.at_start)
    for name, value in watch.reference[6].items():
        torch.testing.assert_close(value, whole.reference[6][name], rtol=1e-5, atol=1e-6)
