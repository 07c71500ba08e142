"""Several processes: Lightning's strategies, made to fit a Hydra app.

`trainer_arguments` turns `cfg.trainer` into `lightning.Trainer` arguments. `strategy: ddp`
and `strategy: fsdp` become Lightning's own `DDPStrategy` / `FSDPStrategy` (FSDP wraps each
decoder layer, the class HF names in `_no_split_modules`), with one change: the launcher.

Lightning's DDP and FSDP start ranks 1..N-1 by re-executing the command line (`sys.argv`). For
a Hydra app that is wrong twice: with `--multirun` every child rank would run the whole sweep
again (N-1 duplicate sweeps, duplicate MLflow runs), and a job of a parallel launcher (joblib,
submitit) has a command line that is not prefopt's at all. `HydraJobLauncher` starts each
child rank as a single run (`hydra.mode=RUN`) of exactly this job: the job's own overrides,
its config sources and its output directory. Where a cluster starts every rank itself
(SLURM's srun, torchrun), nothing is launched and each rank runs the job as it was given.

Only global rank 0 writes to MLflow (Lightning's MLFlowLogger is rank-zero-only) and exports.
Metrics are means over every rank's examples (`metrics.py`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from lightning.pytorch.strategies.launchers import subprocess_script
from omegaconf import DictConfig, OmegaConf
from torch import nn

from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt.distributed")

_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra overrides a child rank must not inherit: it runs one job, in the job's directory.
_JOB_ONLY = (
    "hydra.mode",
    "hydra.run",
    "hydra.sweep",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.output_subdir",
    "hydra.job.name",
    "hydra.callbacks",
)


# --- Trainer arguments ---------------------------------------------------------------------

_FROM_PYTHON = (
    "several processes on one machine need the command line (python -m prefopt.train ... "
    "trainer=ddp) or a cluster launcher that starts every rank (srun, torchrun); `train(cfg)` "
    "called from Python runs one process only"
)


def _several_processes(trainer_cfg) -> bool:
    devices = trainer_cfg.devices
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        devices = int(devices)
    many_devices = (isinstance(devices, int) and devices > 1) or (
        not isinstance(devices, (int, str)) and len(devices) > 1
    )
    return trainer_cfg.strategy in ("ddp", "fsdp") and (many_devices or trainer_cfg.num_nodes > 1)


def _hydra_app() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


def _started_externally() -> bool:
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return (
        "LOCAL_RANK" in os.environ or SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    )


def check_scaling_config(trainer_cfg, model_cfg, reference_cfg, eval_cfg) -> None:
    """Combinations of `cfg.trainer` with the model, reference and evaluation sections that
    cannot work, caught before anything loads."""
    fsdp = trainer_cfg.strategy == "fsdp"
    if fsdp and eval_cfg.num_prompts > 0:
        raise PrefoptError(
            "trainer.strategy=fsdp with eval.num_prompts>0: generation evaluation runs on rank 0 "
            "only, which a sharded model cannot do; set eval.num_prompts=0 (or use trainer=ddp)"
        )
    adapter_reference = model_cfg.lora.enabled and not model_cfg.reference_path
    if fsdp and not reference_cfg.cache and not adapter_reference:
        log.warning(
            "trainer.strategy=fsdp with reference.cache=false: every rank holds a whole, "
            "unsharded reference model; reference.cache=true computes its log-probs once instead"
        )
    if _several_processes(trainer_cfg) and not _hydra_app() and not _started_externally():
        raise RuntimeError(_FROM_PYTHON)
    if model_cfg.lora.enabled:
        from prefopt.model.lora import require_peft

        require_peft()


def trainer_arguments(trainer_cfg: DictConfig, policy: nn.Module) -> dict[str, Any]:
    """`cfg.trainer` as `lightning.Trainer` keyword arguments, with the strategy built."""
    args = OmegaConf.to_container(trainer_cfg, resolve=True)
    args.pop("callbacks", None)  # instantiated by `training.assemble.build_trainer`
    strategy = args.get("strategy", "auto")
    if strategy == "ddp":
        args["strategy"] = HydraDDPStrategy(find_unused_parameters=False)
    elif strategy == "fsdp":
        layers = decoder_layer_classes(policy)
        if not layers:
            raise PrefoptError(
                "trainer.strategy=fsdp: the model names no decoder layer class "
                "(`_no_split_modules`) to shard by; use trainer=ddp"
            )
        args["strategy"] = HydraFSDPStrategy(
            auto_wrap_policy=layers,
            use_orig_params=True,  # LoRA: frozen and trained weights share wrapped units
            state_dict_type="full",  # export gathers whole weights on rank 0
            limit_all_gathers=True,
        )
    # The data module shards its own batches (see PreferenceDataModule): Lightning must not
    # replace the samplers with DistributedSampler, which pads with duplicated examples.
    args["use_distributed_sampler"] = False
    return args


def decoder_layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The classes of the model's repeated blocks (HF's `_no_split_modules`), found in it."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return {type(m) for m in model.modules() if type(m).__name__ in names}


# --- launching child ranks from a Hydra job --------------------------------------------------


class _HydraJobLauncherMixin:
    """Strategy mixin: child ranks are started by `HydraJobLauncher`."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, subprocess_script._SubprocessScriptLauncher):
            self._launcher = HydraJobLauncher(
                self.cluster_environment, self.num_processes, self.num_nodes
            )


class HydraDDPStrategy(_HydraJobLauncherMixin, DDPStrategy):
    """Lightning's `DDPStrategy`; child ranks run this Hydra job once (see the module doc)."""


class HydraFSDPStrategy(_HydraJobLauncherMixin, FSDPStrategy):
    """Lightning's `FSDPStrategy`; child ranks run this Hydra job once (see the module doc)."""


class HydraJobLauncher(subprocess_script._SubprocessScriptLauncher):
    def _call_children_scripts(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            raise RuntimeError(_FROM_PYTHON)
        self._saved_env = {key: os.environ.get(key) for key in _LAUNCH_ENV}
        with child_ranks_started_by(child_rank_command):
            super()._call_children_scripts()

    def finish(self, timeout: float = 120) -> None:
        """Wait for the child ranks and undo the launch's environment, so that the next job of
        a sweep in this process launches its own ranks (Lightning reads LOCAL_RANK as "started
        externally")."""
        for proc in self.procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("child rank %d did not exit; killing it", proc.pid)
                proc.kill()
        for key, value in getattr(self, "_saved_env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def child_ranks_started_by(command: Callable[[int], tuple[list[str], str]]):
    """Within the block, Lightning's launcher starts child rank `i` with `command(i)` (the
    argument list and the working directory).

    Lightning has no public hook for the command of a child rank: its launcher calls the module
    function `subprocess_script._hydra_subprocess_cmd` for Hydra apps. This is the one place that
    swaps it, for the launch only; tests/test_scale.py fails if Lightning renames it.
    """
    original = subprocess_script._hydra_subprocess_cmd
    subprocess_script._hydra_subprocess_cmd = command
    try:
        yield
    finally:
        subprocess_script._hydra_subprocess_cmd = original


def child_rank_command(local_rank: int) -> tuple[list[str], str]:
    """`python -m prefopt.train` running this Hydra job once, in the job's output directory."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    command = [sys.executable, "-m", "prefopt.train"]
    for source in hydra_cfg.runtime.config_sources:
        if source.schema != "file":
            continue
        if source.provider == "main":
            command.append(f"--config-path={source.path}")
        elif source.provider == "command-line":
            command.append(f"--config-dir={source.path}")
    command.append(f"--config-name={hydra_cfg.job.config_name}")
    command += list(hydra_cfg.overrides.task)
    command += [o for o in hydra_cfg.overrides.hydra if not _override_key(o).startswith(_JOB_ONLY)]
    output_dir = hydra_cfg.runtime.output_dir.replace("\\", "\\\\").replace('"', '\\"')
    command += [
        "hydra.mode=RUN",
        f'hydra.run.dir="{output_dir}"',
        "hydra.output_subdir=null",
        f"hydra.job.name=train_ddp_process_{local_rank}",
    ]
    return command, hydra_cfg.runtime.cwd


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def finish(trainer, completed: bool = True) -> None:
    """After fit and export (or a failure): end the process group and the launch, in every
    rank, so that the next job of a sweep in this process starts afresh."""
    launcher = getattr(trainer.strategy, "launcher", None)
    if dist.is_available() and dist.is_initialized():
        if completed:
            dist.barrier()  # no rank tears down while another still exports
        dist.destroy_process_group()
    if isinstance(launcher, HydraJobLauncher):
        launcher.finish()
