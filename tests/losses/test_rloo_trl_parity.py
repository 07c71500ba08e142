"""Parity with TRL 1.16's RLOOTrainer: on the same samples, scores, policy and reference,
prefopt's π_old log-probs, sequence KL, advantages, loss and clipped fraction equal TRL's.

TRL's own code path computes its side: `RLOOTrainer._generate_and_score_completions` (log-probs
of π_old and π_ref, rewards with the KL penalty, leave-one-out advantages) with its `_generate`
replaced by fixed completions (sampling is random; what follows it is the code compared), then
`_compute_loss` after the policy has moved (as on a later step of the same samples), so ratios
depart from 1 and the clip binds on some samples. Two tiny random models in float64.

TRL's knobs as matched: `beta` = loss.beta (KL in the reward, k1 summed per sequence),
`epsilon` (and `epsilon_high` = `epsilon`), `normalize_advantages` both ways,
`num_generations` = loop.samples_per_prompt = 3, no reward clipping, one reward function.
TRL logs the KL as a per-token mean over the batch; prefopt logs the sequence sums (the same
numerator: compared as such).
"""

from __future__ import annotations

import copy

import pytest
import torch

from prefopt.losses import CompletionLogps, RLOOLoss, SampleLogps
from prefopt.model.logprobs import completion_logps
from prefopt.online.samples import as_sample, collate_samples

from ..conftest import tiny_llama
from ..numerics import assert_close_f32

trl = pytest.importorskip("trl")

pytestmark = pytest.mark.numerics

BETA, EPSILON, K = 0.3, 0.2, 3
PROMPTS = [[1, 5, 6], [1, 9, 10], [1, 20, 21]]  # one length: TRL pads prompts on the left
COMPLETIONS = [  # k = 3 per prompt, of different lengths, EOS (2) where one ended
    [[7, 8, 2], [12, 13, 14, 15], [3, 2]],
    [[10, 11, 3, 2], [14], [16, 17, 2]],
    [[23, 2], [24, 25, 26, 27], [28, 29, 30]],
]
SCORES = [[1.0, -0.5, 2.0], [0.0, None, 1.5], [3.0, 3.0, -1.0]]  # None: the judge failed


def _tokenizer(vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = [f"t{i}" for i in range(vocab_size)]
    names[0], names[1], names[2] = "<pad>", "<bos>", "<eos>"
    word_level = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token="<pad>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )


def trl_side(tmp_path, policy, reference, normalize: bool, moved_policy):
    """TRL's generation-time outputs and metrics, then its loss with `moved_policy`'s weights."""
    from datasets import Dataset
    from transformers import LlamaForCausalLM

    policy.save_pretrained(tmp_path / "policy")  # TRL builds its reference from the path
    model = LlamaForCausalLM.from_pretrained(tmp_path / "policy", dtype=torch.float64)
    flat_scores = [s for row in SCORES for s in row]
    config = trl.RLOOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=len(flat_scores),
        num_generations=K,
        beta=BETA,
        epsilon=EPSILON,
        normalize_advantages=normalize,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = trl.RLOOTrainer(
        model=model,
        reward_funcs=lambda completions, **kwargs: list(flat_scores),
        args=config,
        train_dataset=Dataset.from_list([{"prompt": "t5"}] * len(flat_scores)),
        processing_class=_tokenizer(policy.config.vocab_size),
    )
    trainer.ref_model.load_state_dict(reference.state_dict())  # TRL patched its forward
    flat_prompts = [p for p in PROMPTS for _ in range(K)]
    flat_completions = [c for row in COMPLETIONS for c in row]
    trainer._generate = lambda prompts: (flat_prompts, flat_completions, ["x"] * len(prompts))
    trainer.model.train()
    inputs = [{"prompt": f"p{i // K}"} for i in range(len(flat_prompts))]
    output = trainer._generate_and_score_completions(inputs)
    generated = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    trainer.model.load_state_dict(moved_policy.state_dict())
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, output)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return output, generated, loss, logged


@pytest.fixture(scope="module")
def models():
    policy, reference = tiny_llama(seed=0).double(), tiny_llama(seed=1).double()
    moved = copy.deepcopy(policy)
    with torch.no_grad():  # a policy some steps later: its ratios to π_old are off 1
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(moved.lm_head.weight.shape, generator=generator, dtype=torch.float64)
        moved.lm_head.weight.add_(0.15 * noise)
    return policy, reference, moved


@pytest.mark.parametrize("normalize", [False, True])
def test_log_probs_kl_advantages_loss_and_clipping_equal_trls(tmp_path, models, normalize):
    policy, reference, moved = models
    ours = [copy.deepcopy(m) for m in models]  # before TRL patches or moves anything
    output, generated, trl_loss, logged = trl_side(
        tmp_path, policy, copy.deepcopy(reference), normalize, moved
    )

    # prefopt: the round's rows, π_old and π_ref as the round scores them, the loss's advantages
    flat_scores = [float("nan") if s is None else s for row in SCORES for s in row]
    rows = collate_samples(
        [
            as_sample(p, c, 0.0)
            for p, row in zip(PROMPTS, COMPLETIONS)
            for c in row  # advantages filled below
        ],
        pad_token_id=0,
    )
    with torch.no_grad():
        old, ref, current = (completion_logps(m, rows, None) for m in ours)
    kl = old.summed - ref.summed
    loss_fn = RLOOLoss(beta=BETA, epsilon=EPSILON, normalize_advantages=normalize)
    advantages = loss_fn.advantages(torch.tensor(flat_scores).view(-1, K), kl.view(-1, K))
    tokens = int(old.token_counts.max())

    assert_close_f32(old.summed, output["old_logps"], tokens=tokens, msg="π_old")
    assert_close_f32(
        kl.sum() / old.token_counts.sum(), generated["kl"], tokens=tokens, msg="KL"
    )  # TRL logs Σ KL / Σ tokens
    assert_close_f32(advantages.advantages.flatten(), output["advantages"], tokens=tokens)
    out = loss_fn(
        SampleLogps(
            CompletionLogps(current.summed, current.token_counts),
            output["old_logps"],
            output["advantages"],
        )
    )
    assert_close_f32(out.loss, trl_loss, tokens=tokens, msg="loss")
    clipped = out.metrics["clip_fraction"].mean()
    assert_close_f32(clipped, logged["clip_ratio/region_mean"], msg="clip fraction")
    # the comparison's power: ratios off 1 on both sides, the clip binding on some samples only,
    # advantages of both signs, a judge failure and a tie (prompt 2's first two samples)
    assert 0 < clipped < 1
    assert (out.metrics["ratio"] > 1).any() and (out.metrics["ratio"] < 1).any()
    assert (output["advantages"] > 0).any() and (output["advantages"] < 0).any()
    assert (kl < 0).any() and (kl > 0).any()  # k1 per sequence goes negative too
