"""One round of online training data: sample from the current policy, judge, pair, batch.

`RoundMaker.make(index, prompts, policy)` returns a `Round`: the completions sampled (batched
HF `generate` with a KV cache and left padding, `evaluation.generation`), their judge scores,
the training examples formed from them (`pairs.py`; for an on-policy loss, RLOO, every sample
with its advantage, `samples.py`), the round's batches, and, when the
reference's log-probs are read rather than computed at each step (`reference.cache=true`),
the reference's log-probs of every batch, computed once here by the reference model on the
very batches training will see (so they equal what the reference would give online). An
on-policy loss's batches get the policy's own log-probs instead (π_old, for the ratio π/π_old),
scored the same way.

A `Round` is plain data (`to_state` / `from_state`): the data module keeps it in its
`state_dict`, so a resumed run trains on the same pairs without sampling again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from prefopt.data.original_prompts import display_text
from prefopt.evaluation.generation import Samples, decode_completions, generate, score
from prefopt.evaluation.metrics import mean, sequence_kl
from prefopt.judges import score_completions
from prefopt.online.pairs import as_example, as_pair, kto_labels, rank_pairs, round_batches
from prefopt.online.samples import as_sample, judged_samples
from prefopt.reference import SamplingModel

log = logging.getLogger("prefopt.online")


@dataclass
class Round:
    """A round's samples and what training makes of them; plain values only (a checkpoint
    holds it, loaded with `weights_only=True`)."""

    index: int
    prompts: list[list[int]]
    completions: list[list[list[int]]]
    """`completions[p][s]`: sample s of prompt p, up to and including its stop token."""
    scores: list[list[float]]
    """The judge's scores (NaN where it gave none)."""
    selection: list[list]
    """Paired: [prompt, chosen sample, rejected sample]; KTO: [prompt, sample, desirable];
    on-policy (RLOO): [prompt, sample]."""
    batches: list[list[int]]
    """Indices into the examples `selection` makes, one list per training batch."""
    reference_logps: list[list[float]] | None = None
    """Per batch, the reference's summed log-probs of its rows (None: computed at each step)."""
    advantages: list[list[float]] | None = None
    """On-policy losses: `advantages[p][s]` (None: the round trains on pairs or labels)."""
    old_logps: list[list[float]] | None = None
    """On-policy losses: per batch, the policy's summed log-probs of its rows when sampled."""
    metrics: dict[str, float] = field(default_factory=dict)
    texts: list[list[str]] = field(default_factory=list)
    prompt_texts: list[str] = field(default_factory=list)

    def examples(self, paired: bool) -> list[dict]:
        if self.advantages is not None:
            return [
                as_sample(self.prompts[p], self.completions[p][s], self.advantages[p][s])
                for p, s in self.selection
            ]
        if paired:
            return [
                as_pair(self.prompts[p], self.completions[p][a], self.completions[p][b])
                for p, a, b in self.selection
            ]
        return [
            as_example(self.prompts[p], self.completions[p][s], desirable)
            for p, s, desirable in self.selection
        ]

    def table(self, paired: bool) -> dict[str, list]:
        """The round's pairs (or labelled samples) as text, for an MLflow table."""
        rows = self.selection
        table: dict[str, list] = {
            "round": [self.index] * len(rows),
            "prompt": [self.prompt_texts[r[0]] for r in rows],
        }
        if self.advantages is not None:
            table["completion"] = [self.texts[p][s] for p, s in rows]
            table["score"] = [self.scores[p][s] for p, s in rows]
            table["advantage"] = [self.advantages[p][s] for p, s in rows]
        elif paired:
            table["chosen"] = [self.texts[p][a] for p, a, _ in rows]
            table["rejected"] = [self.texts[p][b] for p, _, b in rows]
            table["score_chosen"] = [self.scores[p][a] for p, a, _ in rows]
            table["score_rejected"] = [self.scores[p][b] for p, _, b in rows]
        else:
            table["completion"] = [self.texts[p][s] for p, s, _ in rows]
            table["score"] = [self.scores[p][s] for p, s, _ in rows]
            table["desirable"] = [bool(d) for _, _, d in rows]
        return table

    def to_state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Round:
        return cls(**state)


def training_prompts(examples: Sequence[dict]) -> list[list[int]]:
    """The distinct prompts of the training examples, as token ids, in data order: the
    prompt's own ids where the data kept them, else the ids before the completion (training
    splits keep only the joint tokenization; its prompt part is the prompt as the model read it)."""
    unique: dict[tuple[int, ...], None] = {}
    for example in examples:
        unique.setdefault(tuple(prompt_ids_of(example)), None)
    return [list(p) for p in unique]


def prompt_ids_of(example: dict) -> list[int]:
    """A training example's prompt ids (see `training_prompts`)."""
    ids = example.get("prompt_input_ids") or []
    if ids:
        return ids
    if "chosen_input_ids" in example:
        return example["chosen_input_ids"][: example["chosen_prompt_length"]]
    return example["input_ids"][: example["prompt_length"]]


def round_prompts(prompt_set: int, index: int, per_round: int, seed: int) -> list[int]:
    """Indices of round `index`'s prompts: the prompt set in a seeded order, pass after pass
    (each pass its own order), `per_round` at a time; a round never depends on earlier ones."""
    chosen, orders = [], {}
    for position in range(index * per_round, (index + 1) * per_round):
        n_pass, offset = divmod(position, prompt_set)
        if n_pass not in orders:  # one shuffle per pass a round touches, not one per prompt
            orders[n_pass] = list(range(prompt_set))
            random.Random(seed * 1_000_003 + n_pass).shuffle(orders[n_pass])
        chosen.append(orders[n_pass][offset])
    return chosen


@dataclass
class RoundMaker:
    """Everything a round needs besides the policy: the loop's settings, the judge, π_ref."""

    cfg: object
    """The `loop` section."""
    judge: object
    """`score(prompts, completions, device) -> list[float]`."""
    reference_model: SamplingModel
    tokenizer: object
    stop_ids: list[int]
    paired: bool
    batch_size: int
    """Pairs (or labelled examples) per batch; an on-policy loss's batches split the round's
    samples evenly over its `n_batches` instead, each sample once (TRL's generation batch)."""
    collate: Callable[[list[dict]], dict]
    reference_batch_logps: Callable[[nn.Module, dict], torch.Tensor] | None = None
    """Given: the reference's log-probs are computed once per round for each batch (cache)."""
    chunk_size: int | None = None
    true_reward: Callable[[str], float] | None = None
    """The world's ground-truth reward of a completion, where it has one (the toy world)."""
    on_policy_loss: object | None = None
    """Given (RLOO): the round trains on every sample with the advantages this loss computes
    (`advantages(scores, kl)`), each batch with π_old's log-probs (`policy_batch_logps`)."""
    policy_batch_logps: Callable[[nn.Module, dict], torch.Tensor] | None = None
    progress: bool = True

    def make(
        self,
        index: int,
        prompts: list[list[int]],
        policy: nn.Module,
        n_batches: int,
        device,
        forward_context: Callable[[], AbstractContextManager] = contextlib.nullcontext,
        originals: list | None = None,
    ) -> Round:
        """Round `index` over `prompts`. `originals`: the prompts as written (text or
        messages), which the judge reads (default: the prompts' ids decoded). `forward_context`: the Trainer's precision plugin's
        (`trainer.precision_plugin.forward_context`): the round's reference log-probs are
        computed in it, as the reference would compute them during the training step."""
        start = time.perf_counter()
        cfg, k = self.cfg, self.cfg.samples_per_prompt
        flat_prompts = [p for p in prompts for _ in range(k)]
        flat, sampling_s = self._sample(index, flat_prompts, policy, device)
        texts = decode_completions(self.tokenizer, flat_prompts, flat)
        if originals is None:
            originals = [self.tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
        prompt_texts = [display_text(prompt) for prompt in originals]
        scores = self._judge(index, [p for p in originals for _ in range(k)], texts, device)
        kwargs = dict(
            pad_token_id=self.tokenizer.pad_token_id,
            batch_size=cfg.generation_batch_size,
            device=device,
            chunk_size=self.chunk_size,
        )
        policy_logps = score(policy, flat_prompts, flat, **kwargs)
        with self.reference_model.on(device) as reference:
            reference_logps = score(reference, flat_prompts, flat, **kwargs)
            grouped = _group(flat, k)
            grouped_scores = _group(scores, k)
            advantages, extra = None, {}
            if self.on_policy_loss is not None:
                kl = (policy_logps.double() - reference_logps.double()).tolist()  # k1, summed
                selection, advantages, counts, extra = judged_samples(
                    grouped_scores, _group(kl, k), self.on_policy_loss
                )
            elif self.paired:
                selection, counts = rank_pairs(grouped_scores, grouped, str(cfg.pairs))
                selection = [list(t) for t in selection]
            else:
                labelled, counts = kto_labels(grouped_scores, str(cfg.label), cfg.threshold)
                selection = [list(t) for t in labelled]
            size = self.batch_size
            if advantages is not None:  # TRL's generation batch: the round split evenly
                size = math.ceil(len(selection) / n_batches)
            batches = round_batches(len(selection), size, n_batches, _seed(cfg.seed, index, 1))
            made = Round(
                index=index,
                prompts=[list(p) for p in prompts],
                completions=grouped,
                scores=grouped_scores,
                selection=selection,
                batches=batches,
                advantages=advantages,
                texts=_group(texts, k),
                prompt_texts=prompt_texts,
            )
            if self.reference_batch_logps is not None and batches:
                examples = made.examples(self.paired)
                with forward_context():
                    made.reference_logps = self._batch_logps(
                        self.reference_batch_logps, reference, examples, batches, device
                    )
        if self.policy_batch_logps is not None and batches:
            with forward_context():
                made.old_logps = self._batch_logps(
                    self.policy_batch_logps, policy, made.examples(self.paired), batches, device
                )
        generated = sum(len(ids) for ids in flat)
        lengths = Samples(flat, texts).lengths(set(self.stop_ids))
        finite = [s for s in scores if math.isfinite(s)]
        kept = "pairs" if self.paired and advantages is None else "examples"
        metrics = {
            "round/index": float(index),
            "round/reward_judge": mean(finite),
            "round/kl": sequence_kl(policy_logps, reference_logps),
            "round/length": mean(lengths),
            f"round/{kept}_kept": float(counts.kept),
            f"round/{kept}_dropped": float(counts.dropped),
            "round/tied_prompts": float(counts.tied_prompts),
            "round/judge_failures": float(counts.failures),
            "round/generated_tokens": float(generated),
            "round/sampling_tokens_per_s": generated / max(sampling_s, 1e-9),
        }
        metrics.update({f"round/{name}": float(v) for name, v in counts.extra.items()})
        metrics.update({f"round/{name}": float(v) for name, v in extra.items()})
        if self.true_reward is not None:
            metrics["round/reward_true"] = mean([float(self.true_reward(t)) for t in texts])
        metrics["round/seconds"] = time.perf_counter() - start
        made.metrics = metrics
        return made

    def _sample(self, index: int, prompts: list[list[int]], policy: nn.Module, device):
        cfg, size = self.cfg, self.cfg.generation_batch_size
        completions: list[list[int]] = []
        start = time.perf_counter()
        with tqdm(
            total=len(prompts), desc=f"round {index}: sampling", leave=False, unit="sample",
            disable=not self.progress,
        ) as bar:  # fmt: skip
            for chunk, first in enumerate(range(0, len(prompts), size)):
                batch = prompts[first : first + size]
                completions += generate(
                    policy,
                    batch,
                    pad_token_id=self.tokenizer.pad_token_id,
                    stop_ids=self.stop_ids,
                    max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature,
                    seed=_seed(cfg.seed, index, 2 + chunk),
                    batch_size=size,
                    device=device,
                )
                bar.update(len(batch))
        return completions, time.perf_counter() - start

    def _judge(self, index: int, prompts: list, texts: list[str], device) -> list[float]:
        """Scores through `judges.score_completions`: a batch the judge raised on, or a score it
        could not give, is a failure (NaN here, counted in the round) rather than the end of a
        long run."""
        size = self.cfg.generation_batch_size
        scores: list[float] = []
        with tqdm(
            total=len(texts), desc=f"round {index}: judging", leave=False, unit="sample",
            disable=not self.progress,
        ) as bar:  # fmt: skip
            for first in range(0, len(texts), size):
                batch = texts[first : first + size]
                judged = score_completions(
                    self.judge, prompts[first : first + size], batch, device=device
                )
                scores += [float("nan") if v is None else v for v in judged.scores]
                bar.update(len(batch))
        return scores

    def _batch_logps(
        self, batch_logps, model: nn.Module, examples: list[dict], batches: list[list[int]], device
    ) -> list[list[float]]:
        return [
            batch_logps(model, self._to(self.collate([examples[i] for i in batch]), device))
            .float()
            .cpu()
            .tolist()
            for batch in batches
        ]

    @staticmethod
    def _to(batch: dict, device) -> dict:
        return {k: v.to(device) for k, v in batch.items()}


def _group(values: list, k: int) -> list[list]:
    return [values[i : i + k] for i in range(0, len(values), k)]


def _seed(seed: int, index: int, purpose: int) -> int:
    """Independent seeds per (loop seed, round, purpose): batch order, each sampling chunk."""
    return (seed * 1_000_003 + index) * 1_009 + purpose
