"""Every family of the matrix (`conftest.FAMILIES`) scores, trains and exports like itself.

Each test takes the `family` fixture, so it runs once per family; the expected numbers come
from the model's own `model(...).logits`, never from prefopt's code under test.
"""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
import torch

from prefopt.config.schema import ModelConfig, OptimConfig
from prefopt.errors import PrefoptError
from prefopt.losses import DPOLoss
from prefopt.model.export import export_policy
from prefopt.model.loading import load_causal_lm, load_tokenizer, prepare_policy
from prefopt.model.logprobs import completion_logps
from prefopt.model.packing import PairPacking
from prefopt.reference.adapter import AdapterDisabledReference
from prefopt.reference.online import OnlineReference
from prefopt.training.module import PreferenceModule

from .conftest import build_checkpoint

CHUNK = 3  # several chunks per batch, one ending mid-sequence


def load(family, **overrides):
    return load_causal_lm(str(family.path), ModelConfig(path=str(family.path), **overrides))


def own_logps(model, batch) -> torch.Tensor:
    """Per-row summed log-probs of the completion tokens, from the model's own logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1].float(), -1)
    picked = logps.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    return (picked * batch["completion_mask"][:, 1:]).sum(-1)


def assert_logps_close(got, expected):
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_chunked_logps_and_their_gradients_equal_the_models_own(family, family_batch):
    model = load(family).eval()
    parameters = [p for p in model.parameters() if p.requires_grad]
    expected = own_logps(model, family_batch)
    expected_grads = torch.autograd.grad(expected.sum(), parameters)
    got = completion_logps(model, family_batch, chunk_size=CHUNK).summed
    grads = torch.autograd.grad(got.sum(), parameters)

    assert_logps_close(got, expected)
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shared, padding_free", [("auto", False), ("false", True)])
def test_packed_pairs_score_as_padded_ones_or_are_refused_in_one_line(
    family, family_batch, shared, padding_free, caplog
):
    model = load(family).eval()
    packing = PairPacking(shared, padding_free)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="prefopt.packing"):
        padded = completion_logps(model, family_batch, chunk_size=CHUNK).summed
        packed = packing.logps(model, family_batch, CHUNK).summed
    if packing.supported(model, CHUNK):
        assert_logps_close(packed, padded)
    else:
        refusals = [r for r in caplog.records if "scoring pairs as separate" in r.getMessage()]
        assert len(refusals) == 1


def test_dropout_is_off_in_training_so_step_zero_rewards_are_zero(family, family_batch):
    """Each family's checkpoint has dropout 0.1; `model.disable_dropout` (the default) turns it
    off at load, so the policy in train mode scores as in eval mode, and with policy ==
    reference every implicit reward at step 0 is exactly 0."""
    module = PreferenceModule(
        load(family), DPOLoss(beta=0.1), OptimConfig(lr=1e-3), OnlineReference(load(family))
    )
    module.train()
    out = module.compute_loss(family_batch)
    for side in ("chosen", "rejected"):
        assert out.metrics[f"rewards/{side}"].abs().max().item() == 0.0
    training = completion_logps(module.policy, family_batch, CHUNK).summed
    module.eval()
    with torch.no_grad():
        evaluating = completion_logps(module.policy, family_batch, CHUNK).summed
    torch.testing.assert_close(training.detach(), evaluating, rtol=0, atol=0)


def test_lora_reference_is_the_base_model(family, family_batch):
    """The adapter-disabled reference equals the base checkpoint, even once the adapter has
    moved away from zero (as after training steps)."""
    pytest.importorskip("peft")
    cfg = ModelConfig(path=str(family.path))
    cfg.lora.enabled = True
    cfg.lora.r = 2
    cfg.lora.target_modules = family.lora_targets
    policy = prepare_policy(load(family), cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    reference = AdapterDisabledReference(policy, CHUNK).logps(family_batch).summed
    with torch.no_grad():
        adapted = completion_logps(policy.eval(), family_batch, CHUNK).summed
        base = own_logps(load(family).eval(), family_batch)
    assert_logps_close(reference, base)
    assert not torch.allclose(adapted, base)  # the adapter does change the policy


def test_lora_targets_peft_refuses_are_a_one_line_error_with_a_list_it_takes(tmp_path):
    """PEFT will not put LoRA on Falcon-H1's Mamba projections, so `all-linear` (the default)
    is refused there: one line naming `model.lora.target_modules`, and the list it suggests
    is one PEFT takes."""
    pytest.importorskip("peft")
    family = build_checkpoint("falcon_h1", tmp_path)
    cfg = ModelConfig(path=str(family.path))
    cfg.lora.enabled = True
    with pytest.raises(PrefoptError) as refusal:
        prepare_policy(load(family), cfg)
    message = str(refusal.value)
    assert message.startswith("model.lora.target_modules=all-linear: PEFT refuses it on Falcon")
    suggested = re.search(r"model.lora.target_modules=\[([\w,]+)\]$", message)
    assert suggested, message
    cfg.lora.target_modules = suggested.group(1).split(",")
    policy = prepare_policy(load(family), cfg)
    assert any("lora_A" in name for name, _ in policy.named_parameters())


def test_export_reloads_to_the_same_logps(family, family_batch, tmp_path):
    policy = load(family).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # as if trained: the export must carry the changed weights
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    trainer = SimpleNamespace(strategy=None, is_global_zero=True)
    cfg = ModelConfig(path=str(family.path))
    tokenizer = load_tokenizer(str(family.path), cfg)
    written = export_policy(trainer, SimpleNamespace(policy=policy), tokenizer, tmp_path, cfg, None)
    reloaded = load_causal_lm(str(written["prefopt.export_dir"]), cfg).eval()
    with torch.no_grad():
        expected = own_logps(policy, family_batch)
        assert_logps_close(completion_logps(reloaded, family_batch, CHUNK).summed, expected)


@pytest.mark.parametrize("chunk_size", [CHUNK, None])
def test_scoring_forwards_build_no_kv_cache(family, family_batch, chunk_size):
    """Nothing reads a scoring forward's KV cache: building one costs memory for nothing."""
    model = load(family).eval()
    outputs = []
    for module in (model, model.base_model):
        module.register_forward_hook(lambda module, args, output: outputs.append(output))
    with torch.no_grad():
        completion_logps(model, family_batch, chunk_size)
    assert outputs
    assert all(getattr(output, "past_key_values", None) is None for output in outputs)
