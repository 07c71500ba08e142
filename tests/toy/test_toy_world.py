"""The toy world: language, reward, tokenizer, and a tiny world built once into a temp cache."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefopt.config.schema import ToyWorldConfig
from prefopt.toy import ToyWorld, build_toy_world, reward
from prefopt.toy import world as world_module
from prefopt.toy.language import MAX_WORDS, MIN_WORDS, VOCAB, all_prompts, sample_completion
from prefopt.toy.tokenizer import build_tokenizer
from prefopt.toy.world import cache_key, cache_root, sample_labels


def small_config(cache_dir, **overrides) -> ToyWorldConfig:
    fields = dict(
        seed=0,
        n_train_prompts=40,
        n_val_prompts=12,
        n_test_prompts=12,
        sft_texts=256,
        sft_steps=30,
        sft_batch_size=16,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        max_new_tokens=20,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
    return ToyWorldConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> ToyWorldConfig:
    return small_config(tmp_path_factory.mktemp("toy-cache"))


@pytest.fixture(scope="module")
def world(cfg) -> ToyWorld:
    return build_toy_world(cfg, progress=False)


def read_pairs(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" the price is great .", 1.0),
        (" i hated the sound but it is really lovely .", 0.0),
        (" awful look , terrible feel and i disliked the price .", -3.0),
        (" the look is not bad .", 1.0),  # negation flips the word right after "not"
        (" the look is not very bad .", -1.0),  # ... and only that word
        (" i would recommend it .", 1.0),
        (" i would not recommend it .", -1.0),
        ("Great, GREAT!", 2.0),  # case and punctuation do not matter
        (" the price is okay .", 0.0),
        ("", 0.0),
        ("<eos> qwerty <unk> zzz", 0.0),  # anything a model emits can be scored
    ],
)
def test_reward_of_hand_written_reviews(text, expected):
    assert reward(text) == expected


def test_grammar_writes_short_mixed_reviews_in_the_vocabulary():
    rng = random.Random(0)
    completions = [sample_completion(rng) for _ in range(500)]
    vocabulary = set(VOCAB)
    for completion in completions:
        words = completion.split()
        assert completion.startswith(" ") and completion.endswith(" .")
        assert MIN_WORDS <= len(words) <= MAX_WORDS
        assert set(words) <= vocabulary
    rewards = {reward(c) for c in completions}
    assert min(rewards) < 0 < max(rewards)
    assert len(VOCAB) <= 300 and len(all_prompts()) == len(set(all_prompts())) >= 3000


def test_tokenizer_adds_bos_once_and_round_trips():
    tok = build_tokenizer()
    prompt, completion = "review of the new red phone :", " the price is great ."
    ids = tok(prompt + completion).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.eos_token_id not in ids
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    assert tok.decode(ids, skip_special_tokens=True) == prompt + completion
    # One token per word: the prompt's tokens are a prefix of prompt + completion's.
    assert ids[: len(tok(prompt).input_ids)] == tok(prompt).input_ids
    assert tok("a zzz").input_ids[1:] == [tok.unk_token_id] * 2


def test_splits_have_disjoint_prompts(cfg, world):
    prompts = {
        split: [row["prompt"] for row in read_pairs(path)]
        for split, path in [
            ("train", world.train_path),
            ("val", world.val_path),
            ("test", world.test_path),
        ]
    }
    assert 0 < len(prompts["train"]) <= cfg.n_train_prompts
    assert 0 < len(prompts["val"]) <= cfg.n_val_prompts
    assert 0 < len(prompts["test"]) <= cfg.n_test_prompts
    train, val, test = (set(p) for p in prompts.values())
    assert not train & val and not train & test and not val & test
    assert len(train) == len(prompts["train"])  # one pair per prompt


def test_pairs_carry_their_ground_truth_rewards(world):
    for path in (world.train_path, world.val_path, world.test_path):
        for row in read_pairs(path):
            assert set(row) == {"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"}
            assert row["prompt"] in all_prompts()
            assert row["chosen"].startswith(" ") and row["rejected"].startswith(" ")
            assert row["chosen_reward"] == reward(row["chosen"])
            assert row["rejected_reward"] == reward(row["rejected"])
            assert row["chosen_reward"] != row["rejected_reward"]  # ties are never kept


def test_eval_pairs_are_ordered_by_the_true_reward_and_train_labels_are_noisy(world):
    for path in (world.val_path, world.test_path):
        assert all(row["chosen_reward"] > row["rejected_reward"] for row in read_pairs(path))
    train = read_pairs(world.train_path)
    against = sum(row["chosen_reward"] < row["rejected_reward"] for row in train)
    # Bradley–Terry with τ=1 on gaps of 1-5 reward points flips roughly 10-25% of labels.
    assert 0.05 * len(train) < against < 0.35 * len(train)


def test_bradley_terry_labels_follow_sigmoid_of_the_reward_gap():
    """Gap 1 keeps the order with p = σ(1) = 0.731, gap 3 with σ(3) = 0.953; τ = 2 halves the
    gap: σ(0.5) = 0.622. Over 20k pairs each, the kept share lies within ±0.015 of these."""
    for gap, temperature, expected in [(1, 1.0, 0.731), (3, 1.0, 0.953), (1, 2.0, 0.622)]:
        pairs = [
            {
                "prompt": "p",
                "chosen": " a",
                "rejected": " b",
                "chosen_reward": gap,
                "rejected_reward": 0,
            }
        ] * 20_000
        labelled = sample_labels(pairs, temperature, random.Random(0))
        kept = sum(row["chosen"] == " a" for row in labelled) / len(labelled)
        assert kept == pytest.approx(expected, abs=0.015)
        flipped = next(row for row in labelled if row["chosen"] == " b")
        assert (flipped["chosen_reward"], flipped["rejected_reward"]) == (0, gap)
    assert sample_labels(pairs, 0.0, random.Random(0)) == pairs  # τ = 0: the true order


def test_model_dir_reloads_with_auto_classes(cfg, world):
    model = AutoModelForCausalLM.from_pretrained(world.model_dir)
    tok = AutoTokenizer.from_pretrained(world.model_dir)
    assert model.config.hidden_size == cfg.hidden_size
    assert model.config.num_hidden_layers == cfg.num_layers
    for config in (model.config, model.generation_config):
        assert config.pad_token_id == tok.pad_token_id != tok.eos_token_id
        assert config.bos_token_id == tok.bos_token_id
        assert config.eos_token_id == tok.eos_token_id
    batch = tok(["review of the new red phone : the price is great ."], return_tensors="pt")
    assert batch.input_ids[0, 0] == tok.bos_token_id
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch.input_ids.shape[1], len(tok))


def test_second_build_reuses_the_cache(cfg, world, monkeypatch):
    stamp = world.train_path.stat().st_mtime_ns

    def must_not_build(*args, **kwargs):
        raise AssertionError("a cached world was rebuilt")

    monkeypatch.setattr(world_module, "_build", must_not_build)
    assert build_toy_world(cfg, progress=False) == world
    assert world.train_path.stat().st_mtime_ns == stamp


def test_a_changed_config_builds_a_new_world(cfg, world, monkeypatch):
    built = []

    def fake_build(cfg, out, progress):
        built.append(out)
        (out / "world.json").write_text("{}")

    monkeypatch.setattr(world_module, "_build", fake_build)
    other = build_toy_world(dataclasses.replace(cfg, sft_lr=cfg.sft_lr / 2), progress=False)
    assert len(built) == 1 and other.root != world.root and other.root.is_dir()
    assert other.root.parent == world.root.parent
    # cache_dir only says where worlds live, not which world it is.
    assert cache_key(dataclasses.replace(cfg, cache_dir="/elsewhere")) == cache_key(cfg)


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_build(cfg, out, progress):
        (out / "train.jsonl").write_text("half a file")
        raise RuntimeError("killed")

    monkeypatch.setattr(world_module, "_build", broken_build)
    with pytest.raises(RuntimeError, match="killed"):
        build_toy_world(small_config(tmp_path), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_same_seed_builds_identical_files(cfg, world, tmp_path):
    again = build_toy_world(dataclasses.replace(cfg, cache_dir=str(tmp_path)), progress=True)
    assert again.root != world.root and again.root.name == world.root.name
    for mine, theirs in [
        (world.train_path, again.train_path),
        (world.val_path, again.val_path),
        (world.test_path, again.test_path),
    ]:
        assert mine.read_bytes() == theirs.read_bytes()


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "env"))
    assert cache_root(small_config(tmp_path / "mine")) == tmp_path / "mine"
    assert cache_root(small_config(None)) == tmp_path / "env" / "toy"
    monkeypatch.delenv("PREFOPT_CACHE")
    assert cache_root(small_config(None)).parts[-2:] == ("prefopt", "toy")


def test_too_many_prompts_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="only 3600 prompts"):
        build_toy_world(small_config(tmp_path, n_train_prompts=4000), progress=False)
