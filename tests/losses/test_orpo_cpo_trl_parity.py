"""ORPO and CPO against TRL 1.16's own code on the same tiny model and batch, within float32
rounding.

TRL's trainers are not built (that needs datasets, tokenizers and an Accelerator): their
methods are called with a stand-in `self` carrying only the attributes they read, so the
log-probs, NLL and loss are computed by TRL's code itself (`concatenated_forward`,
`odds_ratio_loss`, `cpo_loss`)."""

import os
from types import SimpleNamespace

import pytest
import torch

from prefopt.losses import CPOLoss, ORPOLoss, PairLogps
from prefopt.model.logprobs import completion_logps

from ..conftest import hand_batch, tiny_llama
from ..numerics import assert_close_f32

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
pytest.importorskip("trl")  # a dev dependency
from trl.experimental.cpo.cpo_trainer import CPOTrainer  # noqa: E402
from trl.experimental.orpo.orpo_trainer import ORPOTrainer  # noqa: E402

pytestmark = pytest.mark.numerics  # rerun with other reduction orders in CI


def trl_batch(batch):
    """hand_batch in TRL's paired layout: labels are the completion tokens, −100 elsewhere."""
    n = batch["input_ids"].shape[0] // 2
    labels = batch["input_ids"].masked_fill(~batch["completion_mask"], -100)
    out = {}
    for name, rows in (("chosen", slice(0, n)), ("rejected", slice(n, None))):
        out[f"{name}_input_ids"] = batch["input_ids"][rows]
        out[f"{name}_attention_mask"] = batch["attention_mask"][rows]
        out[f"{name}_labels"] = labels[rows]
    return out


def stand_in(trainer_cls, **attributes):
    return SimpleNamespace(
        concatenated_inputs=trainer_cls.concatenated_inputs,
        get_batch_logps=trainer_cls.get_batch_logps,
        is_encoder_decoder=False,
        padding_value=0,
        pad_token_id=0,
        aux_loss_enabled=False,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
        **attributes,
    )


def ours(batch, model):
    logps = completion_logps(model, batch)
    return PairLogps(*logps.split(batch["input_ids"].shape[0] // 2))


def close(a, b):
    """Equal within float32 rounding of values built from a pair's two sums of hand_batch's
    at most 5 completion tokens each."""
    assert_close_f32(a, b, tokens=2 * 5)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_matches_trl_and_follows_the_paper_for_the_nll(beta):
    model, batch = tiny_llama(seed=3).eval(), hand_batch()
    trainer = stand_in(ORPOTrainer, beta=beta)
    with torch.no_grad():
        chosen, rejected, _, _, trl_nll = ORPOTrainer.concatenated_forward(
            trainer, model, trl_batch(batch)
        )
        losses, chosen_rewards, rejected_rewards, ratio, log_odds = ORPOTrainer.odds_ratio_loss(
            trainer, chosen, rejected
        )
        out = ORPOLoss(beta=beta)(ours(batch, model))

    # log-probs (length-normalised), rewards, the odds-ratio term: TRL's
    policy = ours(batch, model)
    close(policy.chosen.mean, chosen)
    close(policy.rejected.mean, rejected)
    close(out.metrics["rewards/chosen"], chosen_rewards)
    close(out.metrics["rewards/rejected"], rejected_rewards)
    close(out.metrics["log_odds_ratio"].mean(), ratio)
    close(out.metrics["log_odds_chosen"].mean(), log_odds)

    # The two readings of L_SFT. TRL's: cross-entropy over prompt AND response of the chosen
    # sequence (its labels are the input ids wherever attention_mask is 1).
    logits = model(
        input_ids=batch["input_ids"][:2], attention_mask=batch["attention_mask"][:2]
    ).logits
    labels = batch["input_ids"][:2].masked_fill(batch["attention_mask"][:2] == 0, -100)
    with torch.no_grad():
        whole = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
        )
    close(trl_nll, whole)
    # The paper's (Eq. 1), prefopt's: the response tokens only.
    completion_labels = batch["input_ids"][:2].masked_fill(~batch["completion_mask"][:2], -100)
    with torch.no_grad():
        response = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), completion_labels[:, 1:].flatten()
        )
    close(out.metrics["nll"], response)
    assert abs(trl_nll - response) > 1e-3  # the readings really differ on this batch
    # The total: TRL's formula (nll − mean of β·log σ) with the paper's NLL.
    close(out.loss, response - losses.mean())


@pytest.mark.parametrize(
    "loss_type, beta, label_smoothing",
    [
        ("sigmoid", 0.1, 0.0),
        ("sigmoid", 0.5, 0.1),
        ("hinge", 0.1, 0.0),
        ("ipo", 0.5, 0.0),
        ("simpo", 2.0, 0.1),
    ],
)
def test_cpo_matches_trl(loss_type, beta, label_smoothing):
    """Loss, rewards and log-probs, for each of TRL's CPO loss types (cpo_alpha = 1 and 0.5)."""
    model, batch = tiny_llama(seed=4).eval(), hand_batch()
    for cpo_alpha in (1.0, 0.5):
        trainer = stand_in(
            CPOTrainer,
            beta=beta,
            cpo_alpha=cpo_alpha,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
            simpo_gamma=0.7,
            alpha=0.0,
        )
        with torch.no_grad():
            chosen, rejected, _, _, nll = CPOTrainer.concatenated_forward(
                trainer, model, trl_batch(batch)
            )
            losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(
                trainer, chosen, rejected
            )
            trl_loss = losses.mean() + cpo_alpha * nll
            loss = CPOLoss(
                beta=beta,
                cpo_alpha=cpo_alpha,
                loss_type=loss_type,
                label_smoothing=label_smoothing,
                simpo_gamma=0.7,
            )
            out = loss(ours(batch, model))
        close(out.loss, trl_loss)
        close(out.metrics["nll"], nll)
        close(out.metrics["rewards/chosen"], chosen_rewards)
        close(out.metrics["rewards/rejected"], rejected_rewards)
        policy = ours(batch, model)
        normalised = loss_type in ("ipo", "simpo")
        close(policy.chosen.mean if normalised else policy.chosen.summed, chosen)
        close(policy.rejected.mean if normalised else policy.rejected.summed, rejected)
