"""One `Reference` protocol: the online, cached and adapter-disabled references each satisfy it
and give the log-probs `completion_logps` gives on the reference model itself; `build_reference`
picks among them from config sections; `SamplingModel` gives evaluation π_ref as a model."""

import copy
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from prefopt.config.schema import LoraConfig, ModelConfig, ReferenceConfig
from prefopt.data.collate import collate_pairs
from prefopt.model.logprobs import completion_logps
from prefopt.model.packing import PairPacking
from prefopt.reference import Reference, SamplingModel, build_reference, build_sampling_model
from prefopt.reference.cached import CachedReference
from prefopt.reference.online import OnlineReference

from .conftest import tiny_llama
from .numerics import assert_close_f32
from .test_packing import random_pairs

CHUNK = 4


def pairs_and_loader(n_pairs=7, batch_size=3):
    pairs = random_pairs(n_pairs, seed=11)
    loader = DataLoader(pairs, batch_size=batch_size, collate_fn=lambda e: collate_pairs(e, 0))
    return pairs, loader


def expected_logps(model, batch):
    with torch.no_grad():
        return completion_logps(model.eval(), batch, CHUNK)


def assert_same_logps(reference, model, batch, split="train"):
    assert isinstance(reference, Reference)
    got, want = reference.logps(batch, split), expected_logps(model, batch)
    assert_close_f32(got.summed, want.summed, tokens=want.token_counts)
    torch.testing.assert_close(got.token_counts, want.token_counts, atol=0, rtol=0)


@pytest.mark.numerics
def test_the_online_reference_scores_as_its_model():
    model = tiny_llama(seed=1)
    reference = OnlineReference(model, CHUNK, PairPacking("auto", padding_free=True))
    pairs, _ = pairs_and_loader()
    batch = collate_pairs(pairs[2:6], 0)
    assert_same_logps(reference, model, batch)
    assert reference.forward_calls == 1
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.numerics
def test_the_cached_reference_gives_the_online_log_probs_without_a_forward():
    model = tiny_llama(seed=1)
    pairs, loader = pairs_and_loader()
    table = OnlineReference(model, CHUNK).logps_table({"train": loader}, torch.device("cpu"))
    assert table["train"].shape == (len(pairs), 2)
    cached = CachedReference(table)
    batch = collate_pairs([pairs[5], pairs[0], pairs[3]], 0)  # any order, any grouping
    assert_same_logps(cached, model, batch)
    assert cached.forward_calls == 0
    torch.testing.assert_close(cached.logps_table({"train": loader}, None)["train"], table["train"])


@pytest.mark.numerics
def test_the_adapter_disabled_reference_scores_as_the_base_model():
    pytest.importorskip("peft")
    from prefopt.model.lora import apply_lora
    from prefopt.reference.adapter import AdapterDisabledReference

    base = tiny_llama(seed=2)
    frozen_base = copy.deepcopy(base)
    lora = OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
    policy = apply_lora(base, lora)
    with torch.no_grad():  # a trained adapter: the policy no longer scores as the base
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    policy.train()
    reference = AdapterDisabledReference(policy, CHUNK)
    pairs, loader = pairs_and_loader()
    batch = collate_pairs(pairs[:4], 0)
    assert_same_logps(reference, frozen_base, batch)
    assert policy.training  # the policy's mode is left as training keeps it
    moved = expected_logps(policy, batch).summed
    assert not torch.allclose(moved, expected_logps(frozen_base, batch).summed, atol=1e-3)
    policy.train()
    # the cache computed through it holds the base model's log-probs too
    table = reference.logps_table({"train": loader}, torch.device("cpu"))
    assert_same_logps(CachedReference(table), frozen_base, batch)
    # evaluation samples π_ref from the policy's own base weights: no second copy
    sampling = reference.sampling_model
    assert sampling.shared and sampling.model.peft_model is policy


def fake_datamodule(loader, paired=True):
    return SimpleNamespace(
        paired=paired, fingerprint="data-key", reference_loaders=lambda: {"train": loader}
    )


def test_build_reference_caches_then_loads_nothing(tmp_path):
    model = tiny_llama(seed=3)
    model.save_pretrained(tmp_path / "ref")
    pairs, loader = pairs_and_loader()
    loads = []

    def build(cache=True, **model_overrides):
        def load(path):
            loads.append(path)
            return copy.deepcopy(model)

        return build_reference(
            ReferenceConfig(cache=cache, cache_dir=str(tmp_path / "cache")),
            ModelConfig(path="policy", logits_chunk_size=CHUNK, **model_overrides),
            reference_path=str(tmp_path / "ref"),
            datamodule=fake_datamodule(loader),
            load_model=load,
        )

    batch = collate_pairs(pairs[1:4], 0)
    online = build(cache=False)
    assert isinstance(online, OnlineReference) and loads == [str(tmp_path / "ref")]
    assert_same_logps(online, model, batch)

    loads.clear()
    first = build()
    assert isinstance(first, CachedReference) and len(loads) == 1 and first.precompute_calls == 3
    again = build()
    assert len(loads) == 1 and again.precompute_calls == 0  # a hit: no model loaded
    assert_same_logps(again, model, batch)
    # the reference IS the initial policy: evaluation copies the policy, loads nothing
    assert again.sampling_model.is_initial_policy
    other = build(reference_path=str(tmp_path / "ref"))
    assert not other.sampling_model.is_initial_policy and len(loads) == 1


def test_lora_without_a_reference_path_needs_the_policy():
    with pytest.raises(ValueError, match="build the policy first"):
        build_reference(
            ReferenceConfig(cache=False),
            ModelConfig(path="policy", lora=LoraConfig(enabled=True)),
            reference_path="policy",
            datamodule=SimpleNamespace(paired=True),
            load_model=tiny_llama,
        )


def test_sampling_model_shares_loads_lazily_or_copies_the_initial_policy():
    model = tiny_llama(seed=4)
    shared = OnlineReference(model).sampling_model
    with shared.on(torch.device("cpu")) as got:
        assert got is model

    loads = []
    checkpoint = build_sampling_model(
        ModelConfig(path="policy", reference_path="ref"),
        "ref",
        lambda path: loads.append(path) or tiny_llama(seed=5),
    )
    checkpoint.keep_initial_policy(model)  # not the initial policy: nothing copied
    assert checkpoint.model is None and loads == []
    with checkpoint.on(torch.device("cpu")) as first:
        assert not first.training and not any(p.requires_grad for p in first.parameters())
    with checkpoint.on(torch.device("cpu")) as second:
        assert second is first
    assert loads == ["ref"]  # loaded once, at the first use

    initial = build_sampling_model(ModelConfig(path="policy"), "policy", tiny_llama)
    with pytest.raises(RuntimeError, match="no reference model"):
        with initial.on(torch.device("cpu")):
            pass
    initial.keep_initial_policy(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)  # training moves the policy afterwards
    with initial.on(torch.device("cpu")) as copied:
        assert copied is not model
        assert not torch.equal(copied.lm_head.weight, model.lm_head.weight)


def test_a_sampling_model_is_given_a_model_or_a_loader_not_both():
    with pytest.raises(ValueError, match="not both"):
        SamplingModel(tiny_llama(), load=tiny_llama)
