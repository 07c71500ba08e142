"""Parity with TRL's DPOTrainer: for each of its loss types, prefopt's loss, rewards and
log-probs equal TRL's on the same policy, reference and batch (within float32 rounding).

TRL (a dev dependency) builds its trainer on two tiny random models in float64 and collates the
batch itself; `DPOTrainer.compute_loss` (the public `Trainer` hook) computes its loss and logs
its batch means. prefopt scores the very same tensors with its own log-prob code on copies of
the models taken before TRL patched them. TRL's `sft` is not a paired loss of this family; its
`sigmoid` is prefopt's `dpo` (TRL 1.16 ignores `label_smoothing` there: compared at ε = 0).
"""

import copy

import pytest
import torch

from prefopt.losses import (
    AOTLoss,
    AOTUnpairedLoss,
    APODownLoss,
    APOZeroLoss,
    BCOPairLoss,
    DiscoPOPLoss,
    DPOLoss,
    ExoPairLoss,
    HingeLoss,
    IPOLoss,
    NCAPairLoss,
    PairLogps,
    RobustLoss,
    SigmoidNormLoss,
    SPPOHardLoss,
)
from prefopt.model.logprobs import completion_logps

from ..conftest import tiny_llama
from ..numerics import assert_close_f32

trl = pytest.importorskip("trl")

pytestmark = pytest.mark.numerics  # rerun with other reduction orders in CI

BETA = 0.5
POLICY_NOISE = 0.5
# (TRL loss_type, its label_smoothing, prefopt's loss with the same hyperparameters)
CASES = [
    ("sigmoid", 0.0, DPOLoss(beta=BETA)),
    ("ipo", 0.0, IPOLoss(beta=BETA)),
    ("hinge", 0.0, HingeLoss(beta=BETA)),
    ("robust", 0.2, RobustLoss(beta=BETA, label_smoothing=0.2)),
    # TRL 1.16 dropped the paper's running baseline: compared with δ = 0
    ("bco_pair", 0.0, BCOPairLoss(beta=BETA, running_baseline=False)),
    ("exo_pair", 0.1, ExoPairLoss(beta=BETA, label_smoothing=0.1)),
    ("nca_pair", 0.0, NCAPairLoss(beta=BETA)),
    ("sppo_hard", 0.0, SPPOHardLoss(beta=BETA)),
    ("aot", 0.2, AOTLoss(beta=BETA, label_smoothing=0.2)),
    ("aot_unpaired", 0.2, AOTUnpairedLoss(beta=BETA, label_smoothing=0.2)),
    ("apo_zero", 0.0, APOZeroLoss(beta=BETA)),
    ("apo_down", 0.0, APODownLoss(beta=BETA)),
    ("discopop", 0.0, DiscoPOPLoss(beta=BETA, discopop_tau=0.05)),
    ("sigmoid_norm", 0.0, SigmoidNormLoss(beta=BETA)),
]


@pytest.fixture(scope="module")
def trl_setup(tmp_path_factory):
    """TRL's trainer, its collated batch of 4 pairs of different lengths, and prefopt's
    log-probs of that batch (policy and reference)."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    policy, reference = tiny_llama(seed=0).double(), tiny_llama(seed=1).double()
    with torch.no_grad():  # next-token preferences of its own, far from the reference's
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(policy.lm_head.weight.shape, generator=generator, dtype=torch.float64)
        policy.lm_head.weight.add_(POLICY_NOISE * noise)
    ours = copy.deepcopy(policy), copy.deepcopy(reference)
    # A word-level tokenizer: token `t<i>` is id i, so the batch's ids are the ones written here.
    names = [f"t{i}" for i in range(policy.config.vocab_size)]
    names[0], names[1], names[2] = "<pad>", "<bos>", "<eos>"
    word_level = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token="<pad>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    rows = [
        {"prompt": "<bos> t5 t6", "chosen": " t7 t8", "rejected": " t12 t13"},
        {"prompt": "<bos> t9", "chosen": " t10 t11 t3", "rejected": " t14 t15 t16"},
        {"prompt": "<bos> t20 t21 t22", "chosen": " t23", "rejected": " t24 t25"},
        {"prompt": "<bos> t17", "chosen": " t18 t19 t26 t27", "rejected": " t28 t29"},
    ]
    config = trl.DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        per_device_train_batch_size=len(rows),
        beta=BETA,
        max_length=None,
        use_cpu=True,
        bf16=False,  # transformers turns bf16 autocast on for CPUs that have it: not a parity test
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = trl.DPOTrainer(
        model=policy,
        ref_model=reference,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        policy_logps, reference_logps = (completion_logps(m, batch, None) for m in ours)
    return trainer, batch, policy_logps, reference_logps


def test_trl_attributes_the_parity_test_sets_are_the_ones_trl_reads(trl_setup):
    """The parity test switches loss type on one trainer: the attributes must carry the
    config's values (if TRL renames them, this fails rather than comparing the wrong loss)."""
    trainer = trl_setup[0]
    assert trainer.loss_types == ["sigmoid"] and trainer.beta == BETA
    assert trainer.label_smoothing == 0.0 and trainer.args.discopop_tau == 0.05


def test_prefopt_log_probs_equal_trls_per_sequence(trl_setup):
    """Per completion, summed log-probs from TRL's fused LM head equal prefopt's."""
    trainer, batch, policy_logps, reference_logps = trl_setup
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    for model, ours in ((trainer.model, policy_logps), (trainer.ref_model, reference_logps)):
        with torch.no_grad():
            out = model(**inputs, labels=labels, fused_lm_head=True, use_cache=False)
        theirs = out.log_probs[:, -(labels.shape[1] - 1) :].sum(dim=1)
        assert_close_f32(ours.summed, theirs, tokens=ours.token_counts)
        assert (ours.summed != ours.summed[0]).any()  # not a degenerate batch


@pytest.mark.parametrize("loss_type, label_smoothing, loss", CASES, ids=[c[0] for c in CASES])
def test_loss_rewards_and_logps_equal_trls(trl_setup, loss_type, label_smoothing, loss):
    """TRL logs β·log π/π_ref (summed) as rewards for every loss type; so does prefopt for all
    but `ipo`, whose rewards are documented as β times the length-normalised log-ratios."""
    trainer, batch, policy_logps, reference_logps = trl_setup
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer.label_smoothing = label_smoothing
    trainer.model.train()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    n = batch["input_ids"].shape[0] // 2
    out = loss(PairLogps(*policy_logps.split(n)), PairLogps(*reference_logps.split(n)))
    # The loss and metrics are functions of a pair's four sums: their rounding is that of up to
    # four times the longest completion's tokens.
    tokens = 4 * int(policy_logps.token_counts.max())
    assert_close_f32(out.loss, trl_loss, tokens=tokens)
    rewards = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
    for key in ("logps/chosen", "logps/rejected", *(rewards if loss_type != "ipo" else ())):
        assert_close_f32(out.metrics[key].mean(), logged[key], tokens=tokens, msg=key)


def test_the_batch_exercises_the_losses(trl_setup):
    """Guards the parity test's power: pairs differ in length, the policy's and the reference's
    margins (and the chosen and rejected log-ratios) sort in different orders, and the hinge
    is active on some pairs only, so length normalisation, AOT's sorts and the hinge's kink all
    enter the compared losses."""
    _, batch, policy_logps, reference_logps = trl_setup
    n = batch["input_ids"].shape[0] // 2
    chosen, rejected = policy_logps.split(n)
    ref_chosen, ref_rejected = reference_logps.split(n)
    assert not torch.equal(chosen.token_counts, rejected.token_counts)
    policy_margins = chosen.summed - rejected.summed
    reference_margins = ref_chosen.summed - ref_rejected.summed
    assert not torch.equal(policy_margins.argsort(), reference_margins.argsort())
    chosen_ratios, rejected_ratios = (
        chosen.summed - ref_chosen.summed,
        rejected.summed - ref_rejected.summed,
    )
    assert not torch.equal(chosen_ratios.argsort(), rejected_ratios.argsort())
    hinge_active = BETA * (policy_margins - reference_margins) < 1
    assert hinge_active.any() and not hinge_active.all()
