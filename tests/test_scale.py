"""Scaling out on CPU: 2-process DDP (gloo), --multirun with DDP, LoRA, KTO across ranks, presets.

The DDP test runs the real command line in a temporary directory and reads MLflow back; the
GPU-only settings (bf16, FSDP, compile, the model presets) are checked by composing and
building them, never by running them here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from prefopt.config.schema import register_configs
from prefopt.data.datamodule import FixedBatches
from prefopt.data.order import ShuffledBatches
from prefopt.errors import PrefoptError
from prefopt.model.loading import load_causal_lm, prepare_policy
from prefopt.model.logprobs import completion_logps
from prefopt.reference.adapter import AdapterDisabled, AdapterDisabledReference
from prefopt.toy import build_toy_world
from prefopt.train import train
from prefopt.training.strategies import (
    HydraDDPStrategy,
    HydraFSDPStrategy,
    check_scaling_config,
    trainer_arguments,
)

from .conftest import CONF_DIR, SMALL_TOY, hand_batch, tiny_llama
from .numerics import assert_close_f32

# --- data shards ---------------------------------------------------------------------------


def test_sharded_batches_are_the_single_process_batches_split_without_duplicates():
    n, per_device, world = 101, 4, 2
    single = DataLoader(
        list(range(n)),
        batch_size=per_device * world,
        shuffle=True,
        generator=torch.Generator().manual_seed(3),
    )
    shards = [ShuffledBatches(n, per_device, 3, rank, world) for rank in range(world)]
    for _epoch in range(2):  # the order follows the single process's, epoch after epoch
        expected = [b.tolist() for b in single]
        got = list(zip(*(list(s) for s in shards)))
        assert len(got) == len(shards[0]) == len(expected)  # 101 = 12×8 + 5: nothing left out
        for whole, parts in zip(expected, got):
            assert sorted(whole) == sorted(parts[0] + parts[1])
            assert not set(parts[0]) & set(parts[1])


def test_kto_fixed_batches_go_whole_to_one_rank_each():
    one = FixedBatches(50, 4, seed=0)  # 13 batches
    ranks = [list(FixedBatches(50, 4, seed=0, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    seen = [tuple(b) for r in ranks for b in r]
    assert len(set(seen)) == 12 and set(seen) <= {tuple(b) for b in one.batches}


# --- metrics and KTO's z_ref across two ranks (gloo, forked processes) ---------------------


def test_kto_z_ref_and_metrics_are_means_across_two_ranks():
    """Two gloo ranks (fresh interpreters, tests/kto_two_ranks.py) with different policies
    and batches: KTO's z_ref is the mean of the ranks' KL estimates, the metrics are means
    over both ranks' examples."""
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(__file__).with_name("kto_two_ranks.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    r0, r1 = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    # z_ref: the same on both ranks, the mean of the local KL estimates, clamped at 0
    assert r0["z_ref"] == pytest.approx(r1["z_ref"], abs=1e-6)
    assert r0["z_ref"] == pytest.approx(max(0.0, (r0["local_kl"] + r1["local_kl"]) / 2), abs=1e-5)
    assert r0["local_kl"] != pytest.approx(r1["local_kl"], abs=1e-3)  # else the test is vacuous
    # metrics: weighted by each rank's examples (2 and 3); a NaN-only metric adds nothing
    for kind in ("means", "step_means"):  # validation's and a training step's
        assert r0[kind] == r1[kind]
        expected_loss = (2 * r0["loss"] + 3 * r1["loss"]) / 5
        assert r0[kind]["loss"][0] == pytest.approx(expected_loss, abs=1e-6)
        assert r0[kind]["loss"][1] == 5
        assert r0[kind]["rewards/rejected"][1] == 3  # rank 0 has no undesirable example


# --- 2-process DDP on the toy world, from the command line ---------------------------------

STEPS = 3


def ddp_job_overrides(toy_cache: Path) -> list[str]:
    return [
        *SMALL_TOY,
        f"toy.cache_dir={toy_cache}",
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=1.0",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "eval.num_prompts=0",
        "export=false",
        # Ten times the toy model's lr: at 5e-4 three steps move the loss by ~1e-4 only, too
        # little for "it did train" below to tell a training run from a frozen one.
        "optim.lr=5e-3",
    ]


# Two jobs, not one: the second job in the same process must launch its own ranks again, and
# every check of a one-job sweep is made on the first (a one-job case repeated it in the fast
# suite, 20 s of two DDP ranks).
@pytest.mark.slow
@pytest.mark.parametrize("betas", [["0.1", "0.5"]], ids=["two_jobs"])
def test_ddp_multirun_gives_one_run_per_job_and_the_single_process_losses(
    betas, tmp_path, toy_cache, compose_config
):
    """--multirun with two gloo ranks per job: one parent and one child run per job (child
    ranks neither re-run the sweep nor open runs), and job 0's per-step losses equal those of
    one process with the same global batch (2 × 4 pairs)."""
    env = {**os.environ, "PREFOPT_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "prefopt.train", "--multirun", *ddp_job_overrides(toy_cache)]
    cmd += ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    cmd += ["trainer.precision=32-true", "data.batch_size=4", f"loss.beta={','.join(betas)}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("prefopt").experiment_id])
    parents = [r for r in runs if r.data.tags.get("prefopt.sweep_role") == "parent"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = sorted(
        (r for r in runs if r is not parents[0]), key=lambda r: r.data.tags["prefopt.sweep_job"]
    )
    assert [c.info.run_name for c in children] == [f"dpo β={b} lr=0.005" for b in betas]
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in [*children, parents[0]])
    [sweep_dir] = (tmp_path / "multirun").glob("*/*")
    for job in range(len(betas)):  # rank 1 ran inside the job's directory, as a single run
        assert (sweep_dir / str(job) / "train_ddp_process_1.log").is_file()
    assert not (tmp_path / "outputs").exists()

    def losses(c, run_id):
        return [m.value for m in c.get_metric_history(run_id, "train/loss")]

    ddp = losses(client, children[0].info.run_id)
    cfg = compose_config(*ddp_job_overrides(toy_cache)[len(SMALL_TOY) + 1 :], "data.batch_size=8")
    single = train(cfg)
    expected = losses(MlflowClient(tracking_uri=cfg.logger.tracking_uri), single.run_id)
    assert len(ddp) == len(expected) == STEPS
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(expected), atol=1e-5, rtol=0)
    assert expected[-1] != pytest.approx(expected[0], abs=1e-3)  # it did train


# --- LoRA ----------------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_its_reference_is_the_base_model(compose_config):
    cfg = compose_config(
        "model.lora.enabled=true",
        "model.lora.r=4",
        "model.lora.merge_on_export=true",
        "optim.lr=1e-2",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "eval.num_prompts=2",
        "eval.max_new_tokens=3",
    )
    result = train(cfg)
    policy = result.module.policy
    base = load_causal_lm(str(build_toy_world(cfg.toy).model_dir), cfg.model)

    # only adapter weights changed
    trained = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in policy.state_dict().items()
    }
    lora_keys = [k for k in trained if "lora_" in k]
    assert lora_keys and all(
        not p.requires_grad for n, p in policy.named_parameters() if "lora_" not in n
    )
    for name, value in base.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=0, msg=name)
    assert any(trained[k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)

    # the reference (adapter disabled) scores as the base model; the policy does not
    batch = hand_batch()
    batch["input_ids"] = batch["input_ids"] + 4  # real toy-vocabulary ids, pads stay masked
    reference = AdapterDisabledReference(policy, chunk_size=8).logps(batch)
    expected = completion_logps(base.eval(), batch, chunk_size=8)
    assert_close_f32(reference.summed, expected.summed, tokens=expected.token_counts)
    with torch.no_grad():
        moved = completion_logps(policy.eval(), batch, chunk_size=8).summed
    assert not torch.allclose(moved, expected.summed, atol=1e-4)
    sampling_model = result.module.reference.sampling_model.model
    assert isinstance(sampling_model, AdapterDisabled) and sampling_model.peft_model is policy
    # evaluation samples π_ref from the base, the policy's own weights

    # export: the adapter, and the merged model scoring as the trained policy
    assert (result.export_dir / "adapter_config.json").is_file()
    merged_dir = result.export_dir.parent / "merged"
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    with torch.no_grad():
        torch.testing.assert_close(
            completion_logps(merged, batch, chunk_size=8).summed, moved, atol=1e-4, rtol=0
        )


# --- trainer settings and presets ----------------------------------------------------------


def test_strategies_are_lightnings_with_prefopts_launcher(compose_config):
    model = tiny_llama()
    ddp = trainer_arguments(compose_config("trainer=ddp", "trainer.devices=2").trainer, model)
    assert isinstance(ddp["strategy"], HydraDDPStrategy)
    assert ddp["use_distributed_sampler"] is False
    fsdp_cfg = compose_config("trainer=fsdp", "eval.num_prompts=0")
    fsdp = trainer_arguments(fsdp_cfg.trainer, model)
    assert isinstance(fsdp["strategy"], HydraFSDPStrategy)
    policy = fsdp["strategy"].kwargs["auto_wrap_policy"]
    assert set(policy._module_classes) == {type(model.model.layers[0])}
    with pytest.raises(PrefoptError, match="eval.num_prompts=0"):  # one line, exit 2
        cfg = compose_config("trainer=fsdp")
        check_scaling_config(cfg.trainer, cfg.model, cfg.reference, cfg.eval)


def test_gradient_checkpointing_and_compile_are_switched_on(compose_config):
    cfg = compose_config("model.gradient_checkpointing=true", "model.compile=true")
    model = prepare_policy(tiny_llama(), cfg.model)
    assert model.is_gradient_checkpointing
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)


PRESETS = [
    ("trainer=cpu",),
    ("trainer=gpu",),
    ("trainer=ddp",),
    ("trainer=fsdp", "eval.num_prompts=0"),
    ("model=qwen2.5-0.5b",),
    ("model=llama3-8b",),
    ("+experiment=qwen2.5-0.5b",),
    ("+experiment=qwen2.5-0.5b_lora",),
    ("+experiment=llama3-8b_lora",),
    ("+experiment=llama3-8b_fsdp",),
]


@pytest.mark.parametrize("overrides", PRESETS, ids=lambda o: o[0])
def test_every_preset_composes_and_passes_the_checks(overrides, tmp_path, monkeypatch):
    monkeypatch.setattr("prefopt.training.strategies._hydra_app", lambda: True)  # as from the CLI
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"output_dir={tmp_path}"])
    OmegaConf.resolve(cfg)
    from prefopt.train import check_config

    check_config(cfg)  # no network: nothing is loaded
    if "experiment" in overrides[0]:
        assert cfg.loss.beta == 0.1 and cfg.trainer.precision == "bf16-mixed"
        assert cfg.optim.lr == (5e-6 if cfg.model.lora.enabled else 5e-7)
    if overrides[0] == "+experiment=llama3-8b_fsdp":
        assert cfg.trainer.strategy == "fsdp" and cfg.trainer.devices == 8
        assert cfg.reference.cache and cfg.model.dtype == "float32"


def test_slurm_launcher_follows_the_trainer_and_reads_the_local_site_config(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    register_configs()

    def launcher(*overrides):
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(
                "config",
                overrides=["hydra/launcher=slurm", *overrides],
                return_hydra_config=True,
            )
        return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)

    plain = launcher("trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2")
    assert (plain["tasks_per_node"], plain["gpus_per_node"], plain["nodes"]) == (4, 4, 2)
    assert plain["partition"] is None and plain["_target_"].endswith("SlurmLauncher")
    shutil.copy(conf / "local" / "slurm.example.yaml", conf / "local" / "slurm.yaml")
    site = launcher("+experiment=llama3-8b_fsdp")
    assert (site["partition"], site["account"]) == ("gpu", "my-project")
    assert (site["tasks_per_node"], site["nodes"]) == (8, 1)


def test_training_from_python_with_several_processes_says_how(compose_config):
    cfg = compose_config(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_steps=1",
        "export=false",
    )
    with pytest.raises(RuntimeError, match="python -m prefopt.train"):
        train(cfg)
