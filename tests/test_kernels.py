"""Optional speed-ups of the model's layers: `model.liger_kernel` and `model.compile`.

Liger's kernels need triton and a CUDA GPU, which CI has not: its wiring is tested through a
stand-in `liger_kernel` package on `sys.path` (a real import, the way prefopt finds the real
one) whose patch function records what it was handed. The kernels themselves are measured by
`benchmarks/device/gpu_check.sh` on a GPU.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from prefopt.errors import PrefoptError
from prefopt.losses import DPOLoss
from prefopt.model.liger import apply_liger_kernels
from prefopt.model.loading import Checkpoints, prepare_policy
from prefopt.reference.online import OnlineReference
from prefopt.train import train
from prefopt.training.module import PreferenceModule

from .conftest import hand_batch, tiny_llama

STAND_IN = '''
"""Stand-in for liger-kernel's public API: records each patch call."""
calls = []


def apply_liger_kernel_to_llama(
    rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True,
    swiglu=True, model=None,
):
    calls.append(dict(rope=rope, cross_entropy=cross_entropy,
                      fused_linear_cross_entropy=fused_linear_cross_entropy,
                      rms_norm=rms_norm, swiglu=swiglu, model=model))
'''


@pytest.fixture
def stand_in_liger(tmp_path, monkeypatch):
    """A `liger_kernel` package with `liger_kernel.transformers.apply_liger_kernel_to_llama`,
    importable for this test only; yields its list of recorded calls."""
    package = tmp_path / "site" / "liger_kernel"
    (package / "transformers").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "transformers" / "__init__.py").write_text(textwrap.dedent(STAND_IN))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m.startswith("liger_kernel")]:
        monkeypatch.delitem(sys.modules, name)
    import liger_kernel.transformers

    yield liger_kernel.transformers.calls
    for name in [m for m in sys.modules if m.startswith("liger_kernel")]:
        del sys.modules[name]


def test_liger_kernel_without_the_package_stops_before_anything_loads(
    compose_config, toy_cache, tmp_path
):
    if _installed("liger_kernel"):  # CI never installs it (the `liger` extra is opt-in)
        pytest.skip("liger-kernel is installed here")
    fresh_cache = tmp_path / "toy"  # the session's toy cache may hold a world already
    cfg = compose_config("model.liger_kernel=true", f"toy.cache_dir={fresh_cache}")
    with pytest.raises(PrefoptError, match=r"model\.liger_kernel=true: .*pip install") as error:
        train(cfg)
    assert "\n" not in str(error.value)  # one line
    assert "model.liger_kernel=false" in str(error.value)
    assert not fresh_cache.exists()  # no toy world built, no model loaded
    assert not (tmp_path / "mlflow.db").exists()  # the MLflow run never started


def test_liger_kernel_on_the_cpu_stops_before_anything_loads(
    stand_in_liger, compose_config, toy_cache, tmp_path
):
    fresh_cache = tmp_path / "toy"  # the session's toy cache may hold a world already
    cfg = compose_config("model.liger_kernel=true", "trainer=cpu", f"toy.cache_dir={fresh_cache}")
    with pytest.raises(PrefoptError, match=r"model\.liger_kernel=true: .*CUDA GPU") as error:
        train(cfg)
    assert "\n" not in str(error.value)
    assert "trainer.accelerator=cpu" in str(error.value)
    assert not fresh_cache.exists()
    assert not (tmp_path / "mlflow.db").exists()  # the MLflow run never started
    assert stand_in_liger == []


def test_liger_kernels_patch_the_loaded_model_with_layer_kernels_only(
    stand_in_liger, compose_config, tmp_path
):
    tiny_llama().save_pretrained(tmp_path / "ckpt")
    cfg = compose_config(f"model.path={tmp_path / 'ckpt'}", "model.liger_kernel=true")
    checkpoints = Checkpoints.of(cfg.model)
    policy, reference = checkpoints.load(), checkpoints.load(checkpoints.reference_path)
    assert [call.pop("model") for call in stand_in_liger] == [policy, reference]
    expected = dict(rope=True, rms_norm=True, swiglu=True)
    expected |= dict(cross_entropy=False, fused_linear_cross_entropy=False)
    assert stand_in_liger == [expected, expected]

    stand_in_liger.clear()
    Checkpoints.of(compose_config(f"model.path={tmp_path / 'ckpt'}").model).load()
    assert stand_in_liger == []  # off by default


def test_liger_kernel_for_a_model_type_it_lacks_is_one_line(stand_in_liger):
    config = Qwen2Config(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=32,
    )  # fmt: skip
    with pytest.raises(
        PrefoptError, match=r"no kernels for model type 'qwen2'.*liger_kernel=false"
    ):
        apply_liger_kernels(Qwen2ForCausalLM(config))
    assert stand_in_liger == []


@pytest.mark.slow  # inductor compiles the layer's C++ kernels: ~35 s on 2 cores
def test_compiled_decoder_layers_train_to_the_same_loss_and_gradients(compose_config):
    """`model.compile=true` compiles every decoder layer, and a DPO step through them gives the
    eager step's loss and gradients (on the CPU: inductor's C++ backend)."""
    cfg = compose_config("model.compile=true")
    eager, compiled = tiny_llama(), prepare_policy(tiny_llama(), cfg.model)
    assert all(layer._compiled_call_impl is not None for layer in compiled.model.layers)
    losses, grads = [], []
    for policy in (eager, compiled):
        reference = OnlineReference(tiny_llama(seed=1), chunk_size=4)
        module = PreferenceModule(policy, DPOLoss(beta=0.1), cfg.optim, reference, chunk_size=4)
        loss = module.compute_loss(hand_batch()).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_liger_kernel_is_an_extra_of_its_own():
    """liger-kernel needs triton and a CUDA GPU: only `.[liger]` installs it, never the default
    or CI's `.[dev]`."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    project = project["project"]
    assert project["optional-dependencies"]["liger"] == ["liger-kernel>=0.5"]
    others = [project["dependencies"]] + [
        reqs for name, reqs in project["optional-dependencies"].items() if name != "liger"
    ]
    assert not [r for reqs in others for r in reqs if "liger" in r]


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
