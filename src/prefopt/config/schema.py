"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML file under `conf/` extends one of these schemas through its defaults list, so a
misspelled key or a wrong type fails at start with Hydra's own message, before any model
loads. Field docstrings double as the reference for users (`--cfg job` prints the result).

A field with a fixed set of values is an `Enum` (a `Choice`): a wrong value fails when Hydra
composes, with the list of valid ones, and the value still compares, hashes and prints as its
string (`cfg.optim.scheduler == "cosine"`). Leaf objects a user may swap without touching
Python (the optimizer, the learning-rate schedule, the judge) are `_target_` nodes that
`hydra.utils.instantiate` builds.

Losses are the exception to hand-written schemas: a loss is itself a dataclass, and its schema
is derived from it (`loss_schema`), so a loss's hyperparameters are declared exactly once.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from prefopt.config.choices import (  # noqa: F401  (re-exported: the schemas' field types)
    Attention,
    Choice,
    DataFormat,
    DataSource,
    ModelDtype,
    OnInvalid,
    Scheduler,
)
from prefopt.config.eval_schema import DiagnosticsConfig, EvalConfig  # noqa: F401 (re-exported)
from prefopt.config.loop_schema import LoopConfig
from prefopt.config.task_schema import TaskConfig


@dataclass
class LoraConfig:
    """LoRA adapters through PEFT (`pip install 'prefopt[lora]'`); see `prefopt.model.lora`."""

    enabled: bool = False
    """Train LoRA adapters only; the reference is the base model (the adapter disabled)."""
    r: int = 16
    """Rank of the adapter matrices."""
    alpha: int = 32
    """Scale: the adapter's update is multiplied by alpha / r."""
    dropout: float = 0.05
    target_modules: Any = "all-linear"
    """Module names to adapt, e.g. [q_proj, v_proj]; all-linear = every linear layer but the output layer."""
    merge_on_export: bool = False
    """Also export the base model with the adapter merged in (`<output_dir>/merged`)."""


@dataclass
class ModelConfig:
    path: str = MISSING
    """Hugging Face checkpoint: a local directory or a hub id. `toy` = the toy world's SFT model."""
    reference_path: str | None = None
    """Reference model checkpoint; null = a frozen copy of the initial policy (same `path`)."""
    lr: float = 1e-6
    """The learning rate that suits this model; `optim.lr` defaults to it."""
    reward_lr: float = "${.lr}"  # type: ignore[assignment]
    """The learning rate that suits a reward model on this model (`task=reward`: a new score
    head on it); by default `lr`."""
    dtype: ModelDtype = ModelDtype.float32
    """Weights dtype on load: float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Run code shipped with a hub checkpoint. Off unless you trust its author."""
    logits_chunk_size: int = 512
    """Completion tokens sent through the output layer at once (bounds the logits' memory: 512
    tokens of a 152k vocabulary are 311 MB in fp32); 0 = full [batch, seq, vocab] logits."""
    liger_kernel: bool = False
    """Swap the policy's and an online reference's RMSNorm, SwiGLU MLP and rotary embedding for
    the fused Triton kernels of the `liger-kernel` package (`pip install -e '.[liger]'`; a CUDA
    GPU). Layer kernels only: prefopt computes completion log-probs itself, chunked, so Liger's
    fused linear cross-entropy is not used."""
    disable_dropout: bool = True
    """Turn dropout off in the policy and the reference at load, in train mode too (GPT-2, OPT,
    Phi and others ship it on): the policy's log-probs then do not depend on the mode, and at
    step 0 a policy equal to its reference gets rewards of exactly 0. LoRA adapters keep
    `model.lora.dropout`."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (HF `gradient_checkpointing_enable`)."""
    compile: bool = False
    """`torch.compile` each decoder layer (GPU; the first steps are slow while it compiles)."""
    attention: Attention = Attention.auto
    """Attention kernel: sdpa (packed rows carry a dense [T, T] mask), flex (FlexAttention: packed
    and shared-prompt rows carry a block-sparse mask, sliding windows included), flash_varlen
    (GPU with flash-attn: padding-free rows through the varlen kernel; shared prompts are not
    packed), eager, or auto (sdpa, in one info line: flex and flash_varlen are opt-in until
    measured on a GPU). A choice the machine cannot run falls back with one info line; see
    `prefopt.model.attention`."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    # A string, not a Choice: Hydra reads `prefix_sharing=true` as a bool, which an Enum field
    # refuses; `prefopt.model.packing.prefix_sharing_mode` checks it instead.
    prefix_sharing: str = "auto"
    """Score a pair's chosen and rejected in one sequence `prompt | chosen | rejected` (the
    prompt goes through the model once; policy and reference): auto = when the model can take
    position ids and a 4-D attention mask (checked on the first batch), true = always (an error
    where it cannot), false = never. Paired losses only."""
    log_model: bool = True
    """Log the exported policy to the run as an MLflow logged model (the runs table's Models
    column), with the run's final validation and evaluation metrics; needs `export=true`."""
    register_as: str | None = None
    """Register the logged model under this name in MLflow's model registry, a new version per
    run (or per sweep job); null = not registered."""


@dataclass
class ToyWorldConfig:
    """The embedded toy world: generated reviews, a tiny SFT model, ground-truth-labelled pairs.

    Every field but `cache_dir` is part of the cache key, so changing one builds a new world.
    """

    seed: int = 0
    n_train_prompts: int = 1200
    n_val_prompts: int = 200
    n_test_prompts: int = 200
    sft_texts: int = 6000
    sft_steps: int = 300
    sft_batch_size: int = 32
    sft_lr: float = 3e-3
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_new_tokens: int = 20
    label_temperature: float = 1.0
    """Training labels are sampled as human ones are modelled (Bradley–Terry): the higher-reward
    completion is chosen with probability σ((r_a − r_b) / τ). 0 = always the higher reward.
    Validation and test pairs are always ordered by the true reward."""
    cache_dir: str | None = None
    """Where built worlds are kept; null = $PREFOPT_CACHE or ~/.cache/prefopt/toy."""


@dataclass
class DataConfig:
    source: DataSource = DataSource.toy
    """toy (the built-in world), local (files) or hub (a Hugging Face dataset name or a saved dataset directory)."""
    path: str | None = None
    """Training data: a jsonl/json/parquet/csv file (optionally .gz) or a hub dataset name."""
    val_path: str | None = None
    """Validation file; null = hold out `val_fraction` of the training rows."""
    split: str = "train"
    """Hub split used for training."""
    val_split: str | None = None
    """Hub split used for validation; null = hold out `val_fraction` of the training split."""
    val_fraction: float = 0.05
    format: DataFormat = DataFormat.auto
    """auto, explicit (prompt/chosen/rejected strings), conversational (role/content messages), implicit (chosen/rejected share the prompt as prefix) or unpaired (prompt/completion/label, for KTO)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Rename columns: {canonical: yours}, e.g. {prompt: question, chosen: good, rejected: bad}."""
    apply_chat_template: bool | None = None
    """Plain-text rows and the tokenizer's chat template: null (auto) = text as it is
    (conversations always go through the template; a run on a chat model says so in one info
    line), true = each prompt as a user turn and each completion as the assistant's reply,
    through the template, false = never the template (conversational rows are then an error)."""
    max_length: int = 512
    """Prompt + completion tokens; longer sequences are truncated (completion keeps its start)."""
    max_prompt_length: int = 256
    """Prompt tokens kept when a sequence is too long (the prompt keeps its end)."""
    max_rows: int | None = None
    """Use at most this many training rows (quick experiments)."""
    on_invalid: OnInvalid = OnInvalid.error
    """A bad row (missing field, wrong type, empty, identical sides, too long): `error` stops
    before training naming the file, row and field; `skip` drops such rows and counts them."""
    batch_size: int = 16
    """Pairs per step per device."""
    eval_batch_size: int = 32
    num_workers: int = 0
    seed: int = 0
    """Seed of the validation hold-out and shuffling."""
    num_proc: int | None = None
    """Processes that tokenize the data; null = one per CPU core for 4000 rows or more."""
    cache: bool = True
    """Keep prepared (tokenized) data on disk, keyed by the data, tokenizer and these settings:
    the next run, sweep job or rank with the same key reads it instead of preparing again."""
    cache_dir: str | None = None
    """Where prepared data is kept; null = $PREFOPT_CACHE/data/prepared (~/.cache/prefopt)."""
    packing: bool = False
    """Padding-free batches: a batch's shared pairs (or single sequences) go end to end in rows
    as long as its longest one, each sequence with its own position ids, so little padding runs
    through the model
    (paired losses, models that can take a 4-D attention mask; others keep padded batches)."""
    packing_row_tokens: int | None = None
    """With `packing`: fill rows up to this many tokens (first fit, longest block first), so a
    batch of ragged pairs runs with almost no padding; null = rows as long as the batch's
    longest block. Meant for `model.attention=flex`: under a dense mask a row costs T² (a
    warning says so)."""


def default_optimizer() -> dict[str, Any]:
    """AdamW over the policy's trainable parameters, with this section's lr, betas, decay."""
    return {
        "_target_": "torch.optim.AdamW",
        "_partial_": True,
        "lr": "${..lr}",
        "betas": "${..betas}",
        "weight_decay": "${..weight_decay}",
    }


def default_lr_scheduler() -> dict[str, Any]:
    """Linear warm-up over `warmup_ratio` of the steps, then the `scheduler` shape."""
    return {
        "_target_": "prefopt.training.optimizers.warmup_schedule",
        "_partial_": True,
        "kind": "${..scheduler}",
        "warmup_ratio": "${..warmup_ratio}",
    }


@dataclass
class OptimConfig:
    lr: float = MISSING
    """Peak learning rate (defaults to the model's `lr`)."""
    weight_decay: float = 0.0
    """Decoupled weight decay (conf/optim/adamw.yaml passes it to its optimizer)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's β1, β2 (conf/optim/adamw.yaml passes them to its optimizer)."""
    warmup_ratio: float = 0.1
    """Share of the steps spent in linear warm-up."""
    scheduler: Scheduler = Scheduler.linear
    """After warm-up: constant, linear (decay to 0) or cosine."""
    optimizer: dict[str, Any] = field(default_factory=default_optimizer)
    """The optimizer, built by `hydra.utils.instantiate` with the trainable parameters as its
    first argument: `_target_` names its class (torch.optim.AdamW), the other keys are its
    arguments (`lr: ${..lr}` follows `optim.lr`). Add one with a YAML, e.g. conf/optim/sgd.yaml."""
    lr_scheduler: dict[str, Any] = field(default_factory=default_lr_scheduler)
    """The learning-rate schedule, stepped after every optimizer step: `_target_` names a
    function or class called with the optimizer (and `total_steps=`, the run's optimizer steps,
    when it takes that argument) that returns a torch LR scheduler. The default,
    `prefopt.training.optimizers.warmup_schedule`, follows `scheduler` and `warmup_ratio`."""


@dataclass
class TrainerConfig:
    """Arguments passed to `lightning.Trainer` (only these; add a field to expose another)."""

    accelerator: str = "auto"
    devices: Any = 1
    """Devices per node (an int for SLURM: the launcher's tasks_per_node follows it)."""
    num_nodes: int = 1
    strategy: str = "auto"
    """auto, ddp or fsdp (prefopt builds Lightning's DDPStrategy / FSDPStrategy, see
    `prefopt.training.strategies`), or any other Lightning strategy name."""
    precision: Any = "32-true"
    """32-true, bf16-mixed (fp32 weights, bf16 compute) or bf16-true (bf16 weights: give
    model.dtype=bfloat16 too), or any other Lightning precision."""
    max_epochs: int = 1
    max_steps: int = -1
    val_check_interval: Any = 1.0
    log_every_n_steps: int = 5
    gradient_clip_val: float | None = 1.0
    gradient_clip_algorithm: str = "norm"
    accumulate_grad_batches: int = 1
    num_sanity_val_steps: int = 0
    enable_progress_bar: bool = True
    enable_model_summary: bool = False
    deterministic: bool = False
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    callbacks: dict[str, Any] = field(default_factory=dict)
    """Extra Lightning callbacks by name, each a `_target_` node instantiated by Hydra, e.g.
    `+trainer.callbacks.lr_monitor._target_=lightning.pytorch.callbacks.LearningRateMonitor`;
    a null entry is skipped (how an experiment file switches one off)."""


@dataclass
class LoggerConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI; a relative sqlite path is relative to the directory you launch from."""
    experiment_name: str = "prefopt"
    run_name: str | None = None
    """null = named after the loss and its key hyperparameters, e.g. `dpo β=0.1 lr=1e-4`."""
    tags: dict[str, str] = field(default_factory=dict)
    log_system_metrics: bool = True
    """Sample CPU, memory, disk and network use (GPU too, with pynvml) every 10 s into the
    run's `system/*` metrics, where psutil is installed; false = none."""


@dataclass
class ReferenceConfig:
    cache: bool = True
    """Compute the reference log-probs of all data once, before training, and reuse them (also
    across the jobs of a sweep); false = run the reference model at every step."""
    cache_dir: str | None = None
    """null = $PREFOPT_CACHE/reference, or ~/.cache/prefopt/reference."""
    sync_every_n_steps: int = 0
    """A moving reference (TR-DPO, Gorbatovski et al. 2024, "Learn Your Reference Model for
    Real Good Alignment"): every this many optimizer steps, π_ref ← α·π_θ + (1−α)·π_ref with
    α = `sync_mix`. 0 = the reference stays the initial policy. A moving reference runs
    online (its log-probs cannot be cached); evaluation still compares with the initial one."""
    sync_mix: float = 1.0
    """α of the update above, in (0, 1]: 1 = a hard copy of the policy into the reference
    (TR-DPO's hard update, τ = `sync_every_n_steps`), below 1 TR-DPO's soft update."""


@dataclass
class CheckpointConfig:
    """Resumable checkpoints (policy, optimizer, scheduler, data position, RNG) in
    `<output_dir>/checkpoints/`, written atomically and verified before use; see docs/faults.md."""

    every_n_steps: int = 100
    """Write `last.ckpt` every this many optimizer steps (and always at the end; the one it
    replaces is kept as `previous.ckpt`); 0 = only at the end."""
    every_n_minutes: float = 1.0
    """Also write it after the first optimizer step that ends this many minutes after the last
    write (or the start of training), so a run killed at any moment after its first minute has
    one; 0 = by steps only. Each write costs the checkpoint's size on disk (weights plus
    optimizer state: about 12 bytes per trained parameter with AdamW, 6 GB for a 0.5B model
    trained fully) and the time to write it: raise it for big models."""
    enabled: bool = True
    """false = no checkpoints at all (nothing to resume from)."""


@dataclass
class Config:
    loss: Any = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optim: Any = MISSING
    """Typed by its group's schema (every conf/optim/*.yaml extends `optim_schema`); untyped here
    so that one optimizer YAML's arguments never mix with the default AdamW's."""
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    toy: ToyWorldConfig = field(default_factory=ToyWorldConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    eval: EvalConfig = MISSING
    judge: Any = None
    """The judge of evaluation and of the online loop, a `_target_` node (`conf/judge/`): toy,
    reward_model (`judge.path`), python (`judge.function`) or none (null `_target_`); typed by
    its option's schema in `config/judges_schema.py`."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    """Offline (the data's pairs) or online (sampled from the policy each round): `conf/loop/`."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """Align the policy (the default) or train a reward model on the same data: `conf/task/`."""
    seed: int = 0
    output_dir: str = MISSING
    """Where the run writes its checkpoints and the exported model (default: Hydra's run dir)."""
    export: bool = True
    """Save the aligned policy and tokenizer with `save_pretrained` at the end."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: bool = False
    """Continue the most recent unfinished run (its checkpoint and its MLflow run): the one in
    `output_dir`, else the newest under the runs' parent folder (`outputs/`)."""
    ckpt_path: str | None = None
    """Continue from this checkpoint (a `.ckpt` file, or a run's output or checkpoints folder)."""
    objective: str = "val/rewards/accuracies"
    """The final metric a run returns to Hydra: what an optimising sweeper (Optuna) maximises."""


def loss_schema(loss_cls: type) -> type:
    """A Hydra schema for a loss dataclass: its own fields plus `_target_` pointing at it."""
    target = f"{loss_cls.__module__}.{loss_cls.__qualname__}"
    hints = typing.get_type_hints(loss_cls)
    fields = [("_target_", str, field(default=target))]
    for f in dataclasses.fields(loss_cls):
        default = f.default if f.default is not dataclasses.MISSING else MISSING
        fields.append((f.name, hints[f.name], field(default=default)))
    return dataclasses.make_dataclass(f"{loss_cls.__name__}Config", fields)


def register_configs() -> None:
    from prefopt.config.judges_schema import register_judge_schemas
    from prefopt.losses import LOSSES

    cs = ConfigStore.instance()
    cs.store(name="prefopt_schema", node=Config)
    register_judge_schemas(cs)
    for name, loss_cls in LOSSES.items():
        cs.store(group="loss", name=f"{name}_schema", node=loss_schema(loss_cls))
    for group, schema in GROUP_SCHEMAS.items():
        node: Any = schema
        if schema is OptimConfig:
            # Each optimizer YAML spells out its own optimizer and schedule: were the defaults
            # kept under it, a YAML's SGD would be merged with AdamW's `betas`.
            node = OptimConfig(optimizer=MISSING, lr_scheduler=MISSING)
        cs.store(group=group, name=f"{group}_schema", node=node)


GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "eval": EvalConfig,
    "loop": LoopConfig,
    "task": TaskConfig,
}
"""The schema each `conf/<group>/*.yaml` extends (through `<group>_schema` in its defaults)."""
