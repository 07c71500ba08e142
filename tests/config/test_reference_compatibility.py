"""A `model.reference_path` whose token space is not the policy's is refused in one line before
any weights load; a reference with the policy's tokenizer is accepted."""

from __future__ import annotations

import logging

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from prefopt.errors import PrefoptError
from prefopt.model.compatibility import TokenSpace, check_reference_compatible
from prefopt.train import train

from ..conftest import tiny_llama, user_error

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", *(f"w{i}" for i in range(20))]


def checkpoint(path, words: list[str], with_tokenizer: bool = True, vocab_size: int = 32):
    """A tiny Llama (hidden 16, 1 layer) and a word-level tokenizer over `words` (id = index)."""
    tiny_llama(vocab_size=vocab_size).save_pretrained(path)
    if with_tokenizer:
        backend = Tokenizer(
            models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
        )
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        PreTrainedTokenizerFast(
            tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
            unk_token="<unk>",
        ).save_pretrained(path)  # fmt: skip
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("token_spaces")
    swapped = [*WORDS[:4], "w1", "w0", *WORDS[6:]]  # two words trade ids
    return {
        "policy": checkpoint(root / "policy", WORDS),
        "same": checkpoint(root / "same", WORDS),
        "swapped": checkpoint(root / "swapped", swapped),
        "longer": checkpoint(root / "longer", [*WORDS, "w20"]),
        "small_head": checkpoint(root / "small_head", WORDS, vocab_size=16),
        "no_tokenizer": checkpoint(root / "no_tokenizer", WORDS, with_tokenizer=False),
        "no_tokenizer_64": checkpoint(root / "no_tok64", WORDS, False, vocab_size=64),
    }


def model_cfg(policy: str, reference: str):
    from omegaconf import OmegaConf

    return OmegaConf.create({"path": policy, "reference_path": reference})


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("swapped", "its tokenizer's vocabulary differs (24 tokens"),
        ("swapped", "2 tokens have another id or none in the policy's, e.g. 'w1' is id 4 there"),
        ("longer", "25 tokens"),
        ("small_head", "its output layer scores 16 ids (config.json vocab_size), the policy's"),
        ("no_tokenizer_64", "vocab_size 64 (config.json) vs the policy's 32"),
    ],
)
def test_a_reference_of_another_token_space_is_refused(checkpoints, reference, expected):
    with pytest.raises(PrefoptError) as error:
        check_reference_compatible(model_cfg(checkpoints["policy"], checkpoints[reference]))
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("reference", ["same", "no_tokenizer"])
def test_a_reference_of_the_same_token_space_is_accepted(checkpoints, reference):
    check_reference_compatible(model_cfg(checkpoints["policy"], checkpoints[reference]))


def test_other_special_token_names_only_warn(checkpoints, tmp_path, caplog):
    relabelled = TokenSpace.of(checkpoints["same"])
    relabelled.special["pad_token_id"] = 2  # pad = eos, as many fine-tuned tokenizers set it
    from prefopt.model.compatibility import token_space_differences

    with caplog.at_level(logging.WARNING, logger="prefopt"):
        assert token_space_differences(TokenSpace.of(checkpoints["policy"]), relabelled) == []
    assert "pad_token_id=2 vs 0" in caplog.text


def test_the_run_stops_in_one_line_before_any_weights_load(
    checkpoints, compose_config, capsys, loaded_checkpoints
):
    cfg = compose_config(
        "model=local",
        f"model.path={checkpoints['policy']}",
        f"model.reference_path={checkpoints['swapped']}",
    )
    line = user_error(capsys, train, cfg)
    assert f"model.reference_path={checkpoints['swapped']} cannot be compared with" in line
    assert loaded_checkpoints == []


def test_a_hub_id_not_in_the_cache_is_left_for_the_load(checkpoints, monkeypatch):
    """The config checks never reach the network: a hub id whose files are not cached is
    checked later (`download=True`, just before the weights load), not looked up here."""
    from transformers import AutoConfig

    asked = []
    real = AutoConfig.from_pretrained

    def spy(path, **kwargs):
        asked.append((path, kwargs.get("local_files_only")))
        return real(path, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", spy)
    cfg = model_cfg("someone/not-cached-model-xyz", checkpoints["swapped"])
    assert check_reference_compatible(cfg) is False
    assert asked[0] == ("someone/not-cached-model-xyz", True)
    # With the policy where it is (as the entry point passes it), the check runs and refuses.
    with pytest.raises(PrefoptError, match="cannot be compared"):
        check_reference_compatible(cfg, checkpoints["policy"], download=True)
