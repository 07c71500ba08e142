"""Reference log-probs computed once and cached: same losses, never stale, reused by sweeps."""

import copy
import json
import shutil

import huggingface_hub
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from prefopt.data import PreferenceDataModule
from prefopt.model import loading as model_loading  # every checkpoint loads through it
from prefopt.model.loading import load_causal_lm, load_tokenizer
from prefopt.reference import build_reference
from prefopt.reference.cached import CachedReference, local_checkpoint
from prefopt.toy import build_toy_world
from prefopt.train import train


def loss_history(cfg, run_id):
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    return [m.value for m in client.get_metric_history(run_id, "train/loss")]


def test_cached_reference_gives_the_same_losses_as_the_online_one(compose_config, tmp_path):
    common = [
        "export=false",
        "trainer.max_steps=6",
        "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=1",
        f"reference.cache_dir={tmp_path / 'fresh_cache'}",
    ]
    online = train(
        compose_config(*common, "reference.cache=false", "logger.experiment_name=online")
    )
    cached_cfg = compose_config(*common, "logger.experiment_name=cached")
    cached = train(cached_cfg)

    assert isinstance(cached.module.reference, CachedReference)
    assert cached.module.reference.forward_calls == 0
    assert cached.module.reference.precompute_calls > 0  # this run built the cache
    a, b = loss_history(cached_cfg, online.run_id), loss_history(cached_cfg, cached.run_id)
    assert len(a) == len(b) == 6
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), atol=1e-4, rtol=0)
    assert abs(online.metrics["val/loss"] - cached.metrics["val/loss"]) < 1e-4


def test_second_job_of_a_sweep_loads_no_reference(compose_config, monkeypatch, tmp_path):
    loads = []
    real = model_loading.load_causal_lm
    monkeypatch.setattr(
        model_loading, "load_causal_lm", lambda path, cfg: loads.append(path) or real(path, cfg)
    )
    common = [
        "export=false",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=1",
        f"reference.cache_dir={tmp_path / 'sweep_cache'}",
    ]
    train(compose_config(*common, "loss.beta=0.1"))
    assert len(loads) == 2  # job 1: reference (to fill the cache) + policy
    second = train(compose_config(*common, "loss.beta=0.5"))
    assert len(loads) == 3  # job 2: the policy only
    assert second.module.reference.precompute_calls == 0
    assert second.module.reference.forward_calls == 0


def _prepare(cfg, tokenizer, world, reference_path):
    dm = PreferenceDataModule(cfg.data, tokenizer, toy_world=world)
    dm.setup()
    loads = []

    def load(path):
        loads.append(path)
        return load_causal_lm(path, cfg.model)

    reference = build_reference(
        cfg.reference,
        cfg.model,
        reference_path=str(reference_path),
        datamodule=dm,
        load_model=load,
        batch_size=cfg.data.batch_size,
        data_seed=cfg.data.seed,
    )
    return reference, loads


def test_a_stale_cache_is_never_used(compose_config, tmp_path):
    cfg = compose_config(f"reference.cache_dir={tmp_path / 'cache'}")
    world = build_toy_world(cfg.toy, progress=False)
    tokenizer = load_tokenizer(str(world.model_dir), cfg.model)
    model_dir = tmp_path / "reference"
    load_causal_lm(str(world.model_dir), cfg.model).save_pretrained(model_dir)

    first, loads = _prepare(cfg, tokenizer, world, model_dir)
    assert loads and first.precompute_calls > 0
    again, loads = _prepare(cfg, tokenizer, world, model_dir)
    assert loads == [] and again.precompute_calls == 0  # a hit: the model is not even loaded
    torch.testing.assert_close(again.table["train"], first.table["train"])

    # one changed weight -> miss
    weights_file = next(model_dir.glob("*.safetensors"))
    weights = load_file(weights_file)
    name = next(iter(weights))
    changed = copy.deepcopy(weights)
    changed[name] = changed[name] + 1e-3
    save_file(changed, weights_file, metadata={"format": "pt"})
    after_weight, loads = _prepare(cfg, tokenizer, world, model_dir)
    assert loads and after_weight.precompute_calls > 0
    save_file(weights, weights_file, metadata={"format": "pt"})

    # a different max_length -> different tokenized data -> miss
    shorter = compose_config(
        f"reference.cache_dir={tmp_path / 'cache'}",
        "data.max_length=20",
        "data.max_prompt_length=12",
    )
    after_length, loads = _prepare(shorter, tokenizer, world, model_dir)
    assert loads and after_length.precompute_calls > 0

    # one changed data row -> miss
    rows = world.train_path.read_text().splitlines()
    edited_train = tmp_path / "train.jsonl"
    edited_train.write_text("\n".join([rows[0].replace(" .", " great ."), *rows[1:]]) + "\n")
    edited_world = type("World", (), {"train_path": edited_train, "val_path": world.val_path})()
    after_row, loads = _prepare(cfg, tokenizer, edited_world, model_dir)
    assert loads and after_row.precompute_calls > 0

    # the original setting still hits
    back, loads = _prepare(cfg, tokenizer, world, model_dir)
    assert loads == []


def fake_hub_cache(root, repo_id, model_dir):
    """The layout huggingface_hub gives a downloaded repo: refs/main names a commit whose
    snapshot folder holds the files."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "1" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


def test_a_hub_reference_is_cached_through_its_hugging_face_snapshot(
    compose_config, monkeypatch, tmp_path
):
    # A hub id, resolved offline from a Hugging Face cache made here (no network).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = compose_config(f"reference.cache_dir={tmp_path / 'cache'}")
    world = build_toy_world(cfg.toy, progress=False)
    tokenizer = load_tokenizer(str(world.model_dir), cfg.model)
    snapshot = fake_hub_cache(tmp_path / "hub", "prefopt-test/toy-sft", world.model_dir)
    assert local_checkpoint("prefopt-test/toy-sft") == snapshot

    first, loads = _prepare(cfg, tokenizer, world, "prefopt-test/toy-sft")
    assert (
        loads == ["prefopt-test/toy-sft"] and first.precompute_calls > 0
    )  # loaded through the hub id
    again, loads = _prepare(cfg, tokenizer, world, "prefopt-test/toy-sft")
    assert loads == [] and again.precompute_calls == 0  # the next job: a hit, nothing loaded
    torch.testing.assert_close(again.table["train"], first.table["train"])


def test_a_snapshot_without_all_its_weights_is_not_fingerprinted(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    checkpoint = tmp_path / "sharded"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    (checkpoint / shards["a"]).write_bytes(b"only the first shard so far")
    snapshot = fake_hub_cache(tmp_path / "hub", "prefopt-test/sharded", checkpoint)

    assert local_checkpoint("prefopt-test/sharded") is None  # one shard missing
    (snapshot / shards["b"]).write_bytes(b"now both")
    assert local_checkpoint("prefopt-test/sharded") == snapshot
    assert local_checkpoint("prefopt-test/not-downloaded") is None
