"""How judged samples become pairs, KTO labels and a round's batches (hand-made inputs)."""

import math

import torch

from prefopt.data.collate import collate_pairs
from prefopt.data.unpaired import collate_unpaired
from prefopt.online.datamodule import RoundBatches, SkipFirst
from prefopt.online.pairs import as_example, as_pair, kto_labels, rank_pairs, round_batches
from prefopt.online.reference import RoundReference
from prefopt.online.rounds import Round, round_prompts, training_prompts

NAN = float("nan")


def ids(n):
    return [[10 + s] for s in range(n)]  # distinct completions


def test_best_vs_worst_takes_the_extremes_and_skips_ties_and_failures():
    scores = [[1.0, 3.0, 2.0], [2.0, 2.0, 2.0], [NAN, 5.0, 4.0], [NAN, NAN, 1.0]]
    pairs, counts = rank_pairs(scores, [ids(3)] * 4, "best_vs_worst")
    assert pairs == [(0, 1, 0), (2, 1, 2)]
    assert (counts.kept, counts.dropped, counts.tied_prompts, counts.failures) == (2, 2, 2, 3)


def test_all_ranked_keeps_every_strictly_ordered_pair_chosen_higher():
    scores = [[1.0, 3.0, 2.0, 3.0]]
    pairs, counts = rank_pairs(scores, [ids(4)], "all_ranked")
    # 6 candidate pairs, one tie (samples 1 and 3)
    assert sorted(pairs) == [(0, 1, 0), (0, 1, 2), (0, 2, 0), (0, 3, 0), (0, 3, 2)]
    assert all(scores[0][a] > scores[0][b] for _, a, b in pairs)
    assert (counts.kept, counts.dropped) == (5, 1)


def test_identical_completions_never_form_a_pair():
    pairs, counts = rank_pairs([[2.0, 1.0]], [[[5, 2], [5, 2]]], "best_vs_worst")
    assert pairs == [] and counts.dropped == 1


def test_kto_labels_by_threshold_and_by_the_prompt_median():
    scores = [[0.5, -1.0, 2.0], [1.0, 1.0, 1.0], [NAN, 3.0, 1.0, 2.0]]
    labelled, counts = kto_labels(scores, "threshold", 0.6)
    assert labelled == [
        (0, 0, False), (0, 1, False), (0, 2, True),
        (1, 0, True), (1, 1, True), (1, 2, True),
        (2, 1, True), (2, 2, True), (2, 3, True),
    ]  # fmt: skip
    assert counts.failures == 1 and counts.extra == {"desirable": 7, "undesirable": 2}
    labelled, counts = kto_labels(scores, "median", 0.0)
    # prompt 0: median 0.5 (left out); prompt 1 all tie; prompt 2: median of 3, 1, 2 is 2
    assert labelled == [(0, 1, False), (0, 2, True), (2, 1, True), (2, 2, False)]
    assert counts.tied_prompts == 1 and counts.dropped == 1 + 3 + 2


def test_round_batches_use_every_example_once_before_any_twice():
    batches = round_batches(5, 4, 3, seed=1)
    assert [len(b) for b in batches] == [4, 4, 4]
    flat = [i for b in batches for i in b]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert round_batches(5, 4, 3, seed=1) == batches and round_batches(0, 4, 3, 1) == []


def test_round_prompts_cycle_through_the_prompt_set_each_pass_reordered():
    rounds = [round_prompts(10, r, 4, seed=0) for r in range(5)]  # 20 = two passes
    flat = [i for r in rounds for i in r]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]
    assert round_prompts(10, 3, 4, seed=0) == rounds[3]  # a round depends on its index only


def test_training_prompts_from_joint_ids_when_the_split_kept_none():
    examples = [
        {"chosen_input_ids": [1, 5, 6, 7], "chosen_prompt_length": 2, "prompt_input_ids": []},
        {"chosen_input_ids": [1, 5, 8], "chosen_prompt_length": 2, "prompt_input_ids": []},
        {"chosen_input_ids": [1, 9, 8], "chosen_prompt_length": 2, "prompt_input_ids": [1, 9]},
    ]
    assert training_prompts(examples) == [[1, 5], [1, 9]]


def hand_round(paired=True, with_reference=True):
    prompts = [[1, 5, 6], [1, 9]]
    completions = [[[7, 2], [8, 8, 2], [7, 7]], [[3, 2], [4, 2], [4, 4, 4, 2]]]
    selection = [[0, 1, 0], [1, 2, 0]] if paired else [[0, 1, True], [1, 0, False]]
    batches = [[0, 1], [1, 0]]
    reference = [[-1.0, -2.0, -3.0, -4.0], [-5.0, -6.0, -7.0, -8.0]] if with_reference else None
    return Round(
        index=3, prompts=prompts, completions=completions,
        scores=[[1.0, 2.0, 0.0], [1.0, 0.0, 3.0]], selection=selection, batches=batches,
        reference_logps=reference, prompt_texts=["p0", "p1"],
        texts=[["a", "bb", "c"], ["d", "e", "fff"]],
    )  # fmt: skip


def test_a_round_s_batches_are_offline_batches_plus_the_reference_log_probs():
    made = hand_round()
    batches = RoundBatches(made, lambda rows: collate_pairs(rows, pad_token_id=0), paired=True)
    first = batches[0]
    pairs = [as_pair([1, 5, 6], [8, 8, 2], [7, 2]), as_pair([1, 9], [4, 4, 4, 2], [3, 2])]
    offline = collate_pairs(pairs, pad_token_id=0)
    assert set(first) == set(offline) | {"reference_logps"} and "example_index" not in first
    for key, value in offline.items():
        assert torch.equal(first[key], value), key
    assert first["reference_logps"].tolist() == [-1.0, -2.0, -3.0, -4.0]
    # the round's reference values are read for round batches; others go to the base
    calls = []

    class Base:
        forward_calls = 0
        sampling_model = None

        def logps(self, batch, split="train", shared_prefix=False):
            calls.append(split)
            return "base"

    reference = RoundReference(Base())
    logps = reference.logps(first)
    assert logps.summed.tolist() == [-1.0, -2.0, -3.0, -4.0]
    assert logps.token_counts.tolist() == offline["completion_mask"][:, 1:].sum(-1).tolist()
    assert reference.logps(offline, "val") == "base" and calls == ["val"]


def test_kto_round_batches_are_unpaired_batches():
    made = hand_round(paired=False, with_reference=False)
    batches = RoundBatches(made, lambda rows: collate_unpaired(rows, pad_token_id=0), False)
    batch = batches[1]
    examples = [as_example([1, 9], [3, 2], False), as_example([1, 5, 6], [8, 8, 2], True)]
    offline = collate_unpaired(examples, pad_token_id=0)
    assert set(batch) == set(offline)
    assert batch["desirable"].tolist() == [False, True]
    assert torch.equal(batch["input_ids"], offline["input_ids"])


def test_a_round_survives_its_state_and_a_resumed_loader_skips_finished_batches():
    made = hand_round()
    assert Round.from_state(made.to_state()) == made
    assert list(SkipFirst(4, 1)) == [1, 2, 3] and len(SkipFirst(4, 1)) == 4
    table = made.table(paired=True)
    assert table["score_chosen"] == [2.0, 3.0] and table["score_rejected"] == [1.0, 1.0]
    assert table["chosen"] == ["bb", "fff"] and table["rejected"] == ["a", "d"]
    assert table["prompt"] == ["p0", "p1"] and math.isfinite(sum(table["score_chosen"]))
