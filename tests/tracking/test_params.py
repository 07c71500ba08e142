"""The params a run carries: the key hyperparameters of the composed config, named after their
config keys, and a sweep job's swept keys under the same names. Composes the real config (no
training)."""

from __future__ import annotations

from prefopt.tracking.params import key_params
from prefopt.tracking.sweep import SweepJob

DEFAULT_RUN_PARAMS = {
    "loss": "dpo",
    "loss/beta": "0.1",
    "loss/label_smoothing": "0.0",
    "loss/use_weighting": "False",
    "loss/f_divergence": "reverse_kl",
    "loss/f_alpha": "0.5",
    "model/path": "toy",
    "model/dtype": "float32",
    "reference": "cached",
    "data/source": "toy",
    "data/format": "explicit",
    "data/max_length": "64",
    "data/max_prompt_length": "32",
    "data/batch_size": "16",
    "optim/lr": "0.0005",
    "optim/optimizer": "torch.optim.AdamW",
    "optim/scheduler": "linear",
    "optim/warmup_ratio": "0.1",
    "trainer/accumulate_grad_batches": "1",
    "trainer/max_steps": "-1",
    "trainer/max_epochs": "1",
    "trainer/precision": "32-true",
    "seed": "0",
    "judge": "toy",
}


def test_the_default_run_carries_its_key_hyperparameters_only(compose_config):
    assert key_params(compose_config()) == DEFAULT_RUN_PARAMS


def test_every_loss_field_and_a_set_path_become_params_and_stay_under_thirty(compose_config):
    cfg = compose_config(
        "loss=kto",
        "model.lora.enabled=true",
        "model.reference_path=/models/sft",
        "data=local",
        "data.path=/data/pairs.jsonl",
        "data.max_rows=1000",
        "reference.cache=false",
    )
    params = key_params(cfg)
    assert params["loss"] == "kto"
    assert {k: params[k] for k in params if k.startswith("loss/")} == {
        "loss/beta": "0.1",
        "loss/desirable_weight": "1.0",
        "loss/undesirable_weight": "1.0",
    }
    assert params["model/lora/r"] == "16"
    assert params["model/reference_path"] == "/models/sft"
    assert params["data/path"] == "/data/pairs.jsonl" and params["data/max_rows"] == "1000"
    assert params["reference"] == "online"
    assert len(params) <= 30, sorted(params)


def test_a_dpo_run_with_every_option_set_stays_under_thirty(compose_config):
    cfg = compose_config(
        "loss.ld_alpha=0.5",
        "model.lora.enabled=true",
        "model.reference_path=/models/sft",
        "data=local",
        "data.path=/data/pairs.jsonl",
        "data.max_rows=1000",
    )
    params = key_params(cfg)
    assert params["loss/ld_alpha"] == "0.5"
    assert len(params) <= 30, sorted(params)


def test_a_mix_carries_its_terms_flattened_and_its_reference_need(compose_config):
    params = key_params(compose_config("loss=mix", "loss.terms.dpo.beta=0.2"))
    assert {k: v for k, v in params.items() if k.startswith("loss")} == {
        "loss": "mix",
        "loss/terms/dpo/weight": "1.0",
        "loss/terms/dpo/beta": "0.2",
        "loss/terms/sft/weight": "0.2",
    }
    assert params["reference"] == "cached"  # its dpo term needs π_ref
    without_dpo = key_params(compose_config("loss=mix", "~loss.terms.dpo"))
    assert without_dpo["reference"] == "none"


def test_a_loss_without_a_reference_says_so(compose_config):
    params = key_params(compose_config("loss=simpo"))
    assert params["reference"] == "none"
    assert params["loss/gamma_beta_ratio"] == "0.5"


def test_a_sweep_job_carries_every_swept_key_under_its_param_name(compose_config):
    cfg = compose_config("loss=ipo", "loss.beta=0.5", "optim.lr=1e-3", "optim.weight_decay=0.01")
    job = SweepJob(
        sweep_id="/sweeps/a",
        job_num=0,
        parent_run_id="abc",
        swept_keys=("loss", "loss.beta", "optim.lr", "optim.weight_decay", "toy.seed"),
        choices={"loss": "ipo"},
    )
    # optim.weight_decay and toy.seed are no key params, yet swept: params of the job too
    assert job.params_of(cfg) == {
        "loss": "ipo",
        "loss/beta": "0.5",
        "optim/lr": "0.001",
        "optim/weight_decay": "0.01",
        "toy/seed": "0",
    }
    # the names and values agree with the key params, so logging both never conflicts
    key = key_params(cfg)
    assert all(key[name] == value for name, value in job.params_of(cfg).items() if name in key)
