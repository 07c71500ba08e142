"""Everything checked before a model or dataset is touched, and how user errors are reported.

The schemas (`schema.py`) already refuse unknown keys, wrong types and unknown choices when
Hydra composes. What they cannot say is checked here, one function per config section
(`check_loss`, `check_optim`, `check_data`, ...), in the first seconds of a run, before the
MLflow run starts: a config that cannot work stops there with one line naming the key, the
value and the fix. `check_config` is the entry point's call of them all.

Among them, the checks that no input reaches the network or a library by mistake: keys added
with `+key=value` that no schema has (`check_known_keys`), and data and model paths that can
only be local but do not exist (never sent to the hub: `data.sources.looks_local`).
`check_accelerator` and `check_model_kernels` check the machine rather than the config: the
GPUs asked for are there, and the packages of the kernels asked for.

`check_overrides` runs even before Hydra composes the config, so that a misspelled group option
(`loss=dpoo`) or choice (`optim.scheduler=cosin`) gets the same kind of line listing the valid
options. `reported_errors` prints a `PrefoptError` as that one line on stderr and exits with
status 2, without a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import sys
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prefopt.config import overrides
from prefopt.config.eval_schema import check_eval_config
from prefopt.config.judges_schema import old_judge_spellings
from prefopt.config.schema import GROUP_SCHEMAS, Choice, Config
from prefopt.config.targets import check_target_node, locate_target
from prefopt.config.tracking_server import check_tracking_uri
from prefopt.data.sources import looks_local, missing_local_path
from prefopt.errors import EXIT_USER_ERROR, PrefoptError
from prefopt.judges import check_judge_config
from prefopt.losses.base import PreferenceLoss
from prefopt.model.compatibility import check_reference_compatible
from prefopt.model.loading import check_model_config
from prefopt.reference.sync import check_sync

log = logging.getLogger("prefopt")


def check_overrides(args: list[str], config_dir: str | Path) -> None:
    """`group=option` arguments naming an option that does not exist, `key=value` ones naming
    a key that no schema has (`config/overrides.py`), and `key=value` ones giving a choice
    field (a `schema.Choice`) a value it does not have."""
    if fix := old_judge_spellings(args):
        raise PrefoptError(fix)
    groups = overrides.config_groups(config_dir)
    for arg in args:
        key, sep, value = arg.partition("=")
        plain = not arg.startswith(("+", "~"))
        key = key.lstrip("+~")
        if arg.startswith("-") or not sep:
            continue  # flags and deletions are Hydra's to parse
        sweep_function = "(" in value  # choice(...), interval(...): values Hydra parses
        if key in groups:
            if not sweep_function:
                overrides.check_group_option(key, value, config_dir)
            continue
        if plain:  # `+key` adds a key: checked once composed (check_known_keys)
            overrides.check_key(key, args, groups)
        if sweep_function:
            continue
        if not arg.startswith("~") and (choices := choice_type(key)) is not None:
            for option in value.split(","):  # --multirun optim.scheduler=linear,cosine
                option = option.strip().strip("'\"")
                if option.startswith("${") or option in choices.__members__:
                    continue
                raise PrefoptError(f"{key}={option!r}: choose one of {', '.join(choices.values())}")


def check_config(cfg: DictConfig) -> PreferenceLoss:
    """The loss object, once every section has been checked (the only check that takes the
    whole config: the entry point's)."""
    check_required(cfg)
    check_known_keys(cfg)
    loss = check_loss(cfg.loss)
    check_optim(cfg.optim)
    check_trainer(cfg.trainer)
    check_online_strategy(cfg.get("loop"), cfg.trainer)
    check_on_policy_loss(loss, cfg.get("loop"))
    check_model_config(cfg.model, cfg.model.path)
    check_local_paths(cfg.model, cfg.judge)
    check_reference_compatible(cfg.model)  # config.json and tokenizer files only, no weights
    check_data(cfg.data, loss)
    check_eval_config(cfg.eval)
    check_judge_config(cfg.judge)
    check_checkpoint(cfg.checkpoint, resuming=bool(cfg.resume or cfg.ckpt_path))
    check_sync(cfg.reference, cfg.model, cfg.trainer)
    check_tracking_uri(cfg.logger.tracking_uri)
    return loss


def check_required(cfg: DictConfig) -> None:
    """No `???` left: a value every run needs and no config gave."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise PrefoptError(
            f"{', '.join(missing)}: required, and not set; give it on the command line, "
            f"e.g. {missing[0]}=…"
        )


def check_known_keys(node: DictConfig, section: str = "") -> None:
    """Every key of a schema-typed section is a field of its schema. Hydra lets `+key=value`
    add any key, and a misspelled one (`+data.colums.prompt=q`) would otherwise be ignored, or
    fail as a library's traceback once models are loaded (`+trainer.foo=1`). Free-form
    sections (`trainer.callbacks`, `logger.tags`, `_target_` nodes) take any key."""
    schema = OmegaConf.get_type(node)
    known = (
        [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    )
    for key in node.keys():
        name = f"{section}.{key}" if section else str(key)
        if known is not None and key not in known:
            raise PrefoptError(_unknown_key(name, section, str(key), known))
        value = node.get(key)
        if isinstance(value, DictConfig):
            check_known_keys(value, name)


def _unknown_key(name: str, section: str, key: str, known: list[str]) -> str:
    return overrides.unknown_key_message(name, section, key, known)


def check_loss(loss_cfg: DictConfig) -> PreferenceLoss:
    """The loss the `loss` section describes (its own constructor checks its values)."""
    loss_params = OmegaConf.to_container(loss_cfg, resolve=True)
    loss_class = locate_target("loss._target_", loss_params.pop("_target_"))
    return loss_class(**loss_params)  # direct call, so a bad value raises its own clear error


def check_optim(optim: DictConfig) -> None:
    if not optim.lr > 0:
        raise PrefoptError(f"optim.lr={optim.lr}: the learning rate must be > 0")
    if not 0 <= optim.warmup_ratio < 1:
        raise PrefoptError(f"optim.warmup_ratio={optim.warmup_ratio}: it must be in [0, 1)")
    for key in ("optimizer", "lr_scheduler"):
        check_target_node(f"optim.{key}", optim[key])


def check_trainer(trainer: DictConfig) -> None:
    for name, node in (trainer.get("callbacks") or {}).items():
        if node is not None:
            check_target_node(f"trainer.callbacks.{name}", node)


def check_accelerator(trainer: DictConfig) -> None:
    """This machine has the accelerator `trainer` asks for, with at least as many devices (per
    node); Lightning would say so only after the model has loaded. A check of the machine, not
    of the config (a GPU preset is a valid config on a laptop): the entry point makes it on
    the machine that trains, after `check_config`."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    accelerator, devices = trainer.accelerator, trainer.devices
    names = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
    kind = str(accelerator).lower()
    if kind not in names:
        close = difflib.get_close_matches(kind, names, n=1)
        hint = f"did you mean {close[0]}?" if close else f"choose one of {', '.join(names)}"
        raise PrefoptError(f"trainer.accelerator={accelerator}: no such accelerator; {hint}")
    if kind not in ("gpu", "cuda"):
        return
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "gpu" and not available and torch.backends.mps.is_available():
        available = 1  # Lightning's "gpu" is Apple's one MPS device on a Mac
    if not available:
        raise PrefoptError(
            f"trainer.accelerator={accelerator}: torch finds no GPU on this machine; "
            "train on the CPU with trainer=cpu (or trainer.accelerator=auto)"
        )
    needed = _devices_needed(devices)
    if needed is not None and needed > available:
        raise PrefoptError(
            f"trainer.devices={devices}: needs {needed} GPUs, this machine has {available}; "
            f"set trainer.devices={available} or fewer (devices are counted per node)"
        )


def check_model_kernels(model: DictConfig, trainer: DictConfig) -> None:
    """The kernels `model` asks for run on this machine and `trainer`'s accelerator: with
    `model.liger_kernel`, the liger-kernel package and a CUDA GPU (a check of the machine,
    made beside `check_accelerator`, before any model loads)."""
    if not model.get("liger_kernel"):
        return
    from prefopt.model.liger import liger_kernel_problem

    if problem := liger_kernel_problem(trainer.accelerator):
        raise PrefoptError(f"model.liger_kernel=true: {problem}")


def check_online_strategy(loop: DictConfig | None, trainer: DictConfig) -> None:
    """`loop=online` samples from the policy on every rank with HF `generate`; under FSDP each
    forward all-gathers the sharded layers, and ranks whose samples stop at different lengths
    run different numbers of forwards (no `synced_gpus`): the others wait forever. Evaluation's
    generation is refused under FSDP for the same reason (`training.strategies`)."""
    if loop is not None and str(loop.get("kind")) == "online" and trainer.strategy == "fsdp":
        raise PrefoptError(
            "trainer.strategy=fsdp with loop=online: sampling with generate on sharded weights "
            "deadlocks when the ranks' samples end at different lengths; use trainer=ddp (or "
            "loop=offline)"
        )


def check_on_policy_loss(loss: PreferenceLoss, loop: DictConfig | None) -> None:
    """An on-policy loss (RLOO) trains on the policy's own samples, which only the online loop
    draws."""
    if loss.on_policy and (loop is None or str(loop.get("kind")) != "online"):
        raise PrefoptError(
            f"loss={loss.name} trains on samples of the policy drawn each round, which only the "
            f"online loop makes; add loop=online"
        )


def _devices_needed(devices: Any) -> int | None:
    """How many GPUs a `trainer.devices` value needs (a count, or the highest id + 1 for a list
    of ids); None for `auto` / -1 (all there are) or a value Lightning will judge itself."""
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            devices = [int(part) for part in text.split(",") if part.strip().lstrip("-").isdigit()]
        elif text.lstrip("-").isdigit():
            devices = int(text)
        else:
            return None
    if isinstance(devices, int) and not isinstance(devices, bool):
        return devices if devices > 0 else None
    ids = (
        [d for d in devices if isinstance(d, int)]
        if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple))
        else []
    )
    return max(ids) + 1 if ids else None


def check_local_paths(model: DictConfig, judge: DictConfig | None) -> None:
    """A model or judge path that can only be local must exist here: it is never sent to the
    hub, where it would cost network retries before the same error."""
    for key, value in (
        ("model.path", model.path),
        ("model.reference_path", model.reference_path),
        ("judge.path", judge.get("path") if judge is not None else None),
    ):
        if value and looks_local(value) and not Path(value).exists():
            raise missing_local_path(
                value, "a folder written by save_pretrained (or a hub id, owner/name)", key
            )


def check_data(data: DictConfig, loss: PreferenceLoss) -> None:
    if data.source == "toy" and data.path:
        raise PrefoptError(
            f"data.path={data.path} has no effect with data.source=toy; "
            "train on your file with data=local data.path=…"
        )
    check_data_paths(data)
    if data.format == "unpaired" and loss.on_policy:
        raise PrefoptError(
            f"loss={loss.name} samples from the prompts of paired data (and validates on its "
            "pairs), but data.format=unpaired gives (prompt, completion, label) rows; use "
            "paired data"
        )
    if data.format == "unpaired" and loss.paired:
        raise PrefoptError(
            f"loss={loss.name} trains on pairs (prompt, chosen, rejected), but data.format=unpaired "
            "gives (prompt, completion, label) rows; use loss=kto or paired data"
        )
    if not 0 < data.max_prompt_length < data.max_length:
        raise PrefoptError(
            f"data.max_prompt_length={data.max_prompt_length} must be positive and below "
            f"data.max_length={data.max_length}, or no completion token would fit"
        )
    if not 0 <= data.val_fraction < 1:
        raise PrefoptError(f"data.val_fraction={data.val_fraction}: it must be in [0, 1)")
    for key in ("batch_size", "eval_batch_size"):
        if data[key] < 1:
            raise PrefoptError(f"data.{key}={data[key]}: it must be >= 1")
    if not loss.paired and data.batch_size == 1:
        raise PrefoptError(
            f"loss={loss.name} with data.batch_size=1: its KL estimate pairs each prompt with "
            "another example's completion of the batch, and a batch of one has none; "
            "use data.batch_size=2 or more"
        )
    if data.num_proc is not None and data.num_proc < 1:
        raise PrefoptError(
            f"data.num_proc={data.num_proc}: it must be >= 1, or null for one per CPU core"
        )
    if data.packing_row_tokens is not None and data.packing_row_tokens < 1:
        raise PrefoptError(
            f"data.packing_row_tokens={data.packing_row_tokens}: it must be >= 1, or null for "
            "rows as long as the batch's longest pair"
        )


def check_data_paths(data: DictConfig) -> None:
    """`data=local` paths exist; a hub source's path or val_path that can only be local exists
    too. A missing file is said here, in the first second, rather than after `datasets` spent
    its retries asking the hub for a dataset of that name."""
    what = "a data file (jsonl, json, parquet or csv, optionally .gz) or a dataset folder"
    for key in ("path", "val_path"):
        value = data.get(key)
        if not value or Path(value).exists():
            continue
        if looks_local(value):
            raise missing_local_path(value, what, f"data.{key}")
        if data.source == "local":
            raise PrefoptError(
                f"{missing_local_path(value, what, f'data.{key}')}; for a Hugging Face hub "
                f"dataset of that name, use data=hub data.{key}={value}"
            )


def check_checkpoint(checkpoint: DictConfig, resuming: bool) -> None:
    """`resuming`: `resume=true` or a `ckpt_path` was given."""
    if checkpoint.every_n_steps < 0:
        raise PrefoptError(
            f"checkpoint.every_n_steps={checkpoint.every_n_steps}: it must be >= 0 "
            "(0 = only at the end)"
        )
    if checkpoint.every_n_minutes < 0:
        raise PrefoptError(
            f"checkpoint.every_n_minutes={checkpoint.every_n_minutes}: it must be >= 0 "
            "(0 = by steps only)"
        )
    if resuming and not checkpoint.enabled:
        raise PrefoptError(
            "resume=true / ckpt_path with checkpoint.enabled=false: a resumed run would write no "
            "checkpoints of its own; drop checkpoint.enabled=false"
        )


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


@contextlib.contextmanager
def reported_errors():
    """A `PrefoptError` becomes one line on stderr and exit status 2 (a single run; in a
    --multirun the job fails and the sweep records it)."""
    try:
        yield
    except PrefoptError as error:
        if _in_multirun():
            log.error("%s", error)
            raise
        logging.shutdown()  # flush the log files before leaving
        print(f"prefopt: error: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def choice_type(key: str) -> type[Choice] | None:
    """The `Choice` enum of a dotted config key (`optim.scheduler`), or None when the key is not
    a choice field of a schema."""
    group, _, rest = key.partition(".")
    schema: Any = GROUP_SCHEMAS.get(group)
    parts = rest.split(".") if schema is not None else key.split(".")
    if schema is None:
        schema = Config
    for part in parts:
        if not dataclasses.is_dataclass(schema):
            return None
        hint = typing.get_type_hints(schema).get(part)
        if hint is None:
            return None
        schema = hint
    return schema if isinstance(schema, type) and issubclass(schema, Choice) else None
