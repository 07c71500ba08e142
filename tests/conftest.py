"""Shared fixtures: a tiny random causal LM for fast module-level tests."""

import os

# One intra-op thread unless the caller says otherwise, set before torch starts its thread pool
# and inherited by every `python -m prefopt.train` a test starts. The suite's tensors are tiny:
# two threads only add synchronisation (the fast suite ran in 5 min 56 s on one thread against
# 7 min 44 s on two, on 2 cores). CI reruns the `numerics` tests on every core and ATen's
# portable kernels, so a tolerance that holds on one reduction order only still fails there.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning as L  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def tiny_llama_config(vocab_size: int = 32, **overrides) -> LlamaConfig:
    """A one-layer Llama of width 16: the shape of every tiny test model (causal or classifier)."""
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaConfig(**{**settings, **overrides})


def tiny_llama(seed: int = 0, vocab_size: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size))


def quiet_trainer(tmp_path, **kwargs) -> L.Trainer:
    """A CPU Trainer that writes and prints nothing (no logger, checkpoints or bars)."""
    defaults = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    return L.Trainer(**{**defaults, **kwargs})


@pytest.fixture
def tiny_model_factory():
    return tiny_llama


def hand_batch() -> dict[str, torch.Tensor]:
    """Two pairs, chosen rows first. Row layout: BOS, prompt..., completion..., padding (0)."""
    input_ids = torch.tensor(
        [
            [1, 5, 6, 7, 8, 2, 0],  # pair 0 chosen: prompt [1,5,6], completion [7,8,2]
            [1, 9, 10, 11, 2, 0, 0],  # pair 1 chosen: prompt [1,9], completion [10,11,2]
            [1, 5, 6, 12, 2, 0, 0],  # pair 0 rejected: completion [12,2]
            [1, 9, 13, 14, 15, 16, 2],  # pair 1 rejected: completion [13,14,15,16,2]
        ]
    )
    attention_mask = (input_ids != 0).long()
    attention_mask[:, 0] = 1
    completion_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    completion_mask[0, 3:6] = True
    completion_mask[1, 2:5] = True
    completion_mask[2, 3:5] = True
    completion_mask[3, 2:7] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
    }


@pytest.fixture
def batch():
    return hand_batch()


# --- composing the real Hydra config for end-to-end tests ---------------------------------

CONF_DIR = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "conf")

# A small toy world: enough pairs to learn from, small enough to build in seconds.
SMALL_TOY = [
    "toy.n_train_prompts=400",
    "toy.n_val_prompts=64",
    "toy.n_test_prompts=32",
    "toy.sft_steps=250",
]


@pytest.fixture(scope="session", autouse=True)
def prefopt_cache(tmp_path_factory):
    """$PREFOPT_CACHE (prepared data, scratch files) in the session's tmp dir, never ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("prefopt_cache")
        patch.setenv("PREFOPT_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    """One toy-world cache for the whole session: the world is built once, then reused."""
    return tmp_path_factory.mktemp("toy_cache")


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("reference_cache")


@pytest.fixture
def compose_config(toy_cache, reference_cache, tmp_path):
    """Compose conf/config.yaml as `python -m prefopt.train` would, pointed at tmp paths."""
    from hydra import compose, initialize_config_dir

    from prefopt.config.schema import register_configs

    register_configs()

    def _compose(*overrides: str):
        defaults = [
            *SMALL_TOY,
            f"toy.cache_dir={toy_cache}",
            f"reference.cache_dir={reference_cache}",
            f"output_dir={tmp_path / 'out'}",
            f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "trainer.enable_progress_bar=false",
            "eval.num_prompts=8",  # generation eval stays on, on few prompts: a fast suite
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=[*defaults, *overrides])

    return _compose


def user_error(capsys, fn, *args) -> str:
    """Run `fn` as the CLI does; the one stderr line (after asserting exit status 2)."""
    from prefopt.config import checks

    with pytest.raises(SystemExit) as exit_info:
        with checks.reported_errors():
            fn(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("prefopt: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def loaded_checkpoints(monkeypatch) -> list[str]:
    """The paths every model load of the test goes to (all loads pass `load_causal_lm`)."""
    from prefopt.model import loading as model_loading

    loaded: list[str] = []
    real_load = model_loading.load_causal_lm

    def counting_load(path, cfg):
        loaded.append(path)
        return real_load(path, cfg)

    monkeypatch.setattr(model_loading, "load_causal_lm", counting_load)
    return loaded
