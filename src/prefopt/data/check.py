"""`python -m prefopt.data.check [overrides]`: the data a run would train on, profiled, with no
training.

It takes the overrides `python -m prefopt.train` takes, composes the same config, makes the
checks a run makes on its data, loss and model sections, then prepares the data exactly as the
run would (`PreferenceDataModule.setup`: the same rows, tokenizer, cache and `data.on_invalid`)
and prints, per split, the profile the run logs to MLflow as that split's dataset
(`tracking.datasets.dataset_entity`: rows, pairs, dropped rows by reason, mean token lengths),
then how the token lengths sit against `data.max_length` (`summary.length_spread`). No model
weights load (only the tokenizer), no MLflow run starts, nothing is written but the
prepared-data cache the run will then read.

Bad input is the run's one line with exit status 2; a bad row (with `data.on_invalid=error`)
is named by file and line, as the run would name it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from prefopt.config import checks, config_dir
from prefopt.errors import PrefoptError

USAGE = """usage: python -m prefopt.data.check [overrides]

Prepares the data a `python -m prefopt.train` run with the same overrides would train on and
prints its profile (rows, pairs, dropped rows by reason, token lengths); trains nothing.
e.g.  python -m prefopt.data.check model=local model.path=./my-model data=local data.path=pairs.jsonl"""


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """conf/config.yaml with `overrides`, as a run composes it (the group options checked first).
    `output_dir` gets a placeholder: outside a Hydra app there is no run folder, and the check
    writes none."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from prefopt.config.schema import register_configs

    checks.check_overrides(list(overrides), config_dir())
    register_configs()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose("config", overrides=["output_dir=.", *overrides])
    except HydraException as error:
        raise PrefoptError(_hydra_message(error)) from None


def _hydra_message(error: Exception) -> str:
    """Hydra's lines that say what went wrong (its unindented lines, and its cause's first),
    without its advice to append a misspelled key with `+`."""
    lines = [
        line
        for line in str(error).splitlines()
        if line.strip() and not line[0].isspace() and not line.startswith("To append")
    ]
    cause = str(error.__cause__ or "").strip().splitlines()[:1]
    return "; ".join(dict.fromkeys([*lines, *cause])) or repr(error)


def check_data_config(cfg: DictConfig):
    """The run's checks of what decides the data (the loss, the data section, the model's path
    and tokenizer settings); the loss object."""
    missing = sorted(
        key for key in OmegaConf.missing_keys(cfg) if key.split(".")[0] in ("data", "model", "loss")
    )
    if missing:
        raise PrefoptError(f"{', '.join(missing)}: required, and not set; e.g. {missing[0]}=…")
    checks.check_known_keys(cfg)
    loss = checks.check_loss(cfg.loss)
    checks.check_model_config(cfg.model, cfg.model.path)
    checks.check_local_paths(cfg.model, None)
    checks.check_data(cfg.data, loss)
    return loss


def data_profile(cfg: DictConfig) -> list[dict]:
    """The loss's name, then per split (train, then val): its name as MLflow shows it, the profile the run logs, and
    the spread of its token lengths against the length budget."""
    from prefopt.data.datamodule import PreferenceDataModule
    from prefopt.data.summary import length_spread
    from prefopt.model.loading import Checkpoints
    from prefopt.toy import build_toy_world
    from prefopt.tracking.datasets import dataset_entity

    loss = check_data_config(cfg)
    uses_toy = "toy" in (cfg.model.path, cfg.data.source)
    world = build_toy_world(cfg.toy) if uses_toy else None
    tokenizer = Checkpoints.of(cfg.model, world and world.model_dir).load_tokenizer()
    datamodule = PreferenceDataModule(cfg.data, tokenizer, toy_world=world, paired=loss.paired)
    datamodule.setup("fit")
    profiles = []
    for summary, examples in zip(
        datamodule.summaries(), (datamodule.train_examples, datamodule.val_examples)
    ):
        entity = dataset_entity(summary)
        profiles.append(
            {
                "split": summary.split,
                "name": entity.name,
                "profile": json.loads(entity.profile),
                "lengths": length_spread(
                    examples.dataset, cfg.data.max_length, cfg.data.max_prompt_length
                ),
            }
        )
    if advice := loss.check_data(datamodule.stats):
        profiles.append({"advice": advice})
    return [{"loss": loss.name}, *profiles]


def format_profile(profiles: list[dict], cfg: DictConfig) -> str:
    lines = []
    for entry in profiles:
        if "loss" in entry:
            lines.append(
                f"loss={entry['loss']} data.source={cfg.data.source} "
                f"data.max_length={cfg.data.max_length} "
                f"data.max_prompt_length={cfg.data.max_prompt_length}"
            )
        elif "advice" in entry:
            lines.append(f"advice: {entry['advice']}")
        else:
            lines.append(f"{entry['split']}: {entry['name']}")
            lines += [f"  {key:<28} {value}" for key, value in entry["profile"].items()]
            lines += [f"  {key:<28} {value}" for key, value in entry["lengths"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in args):
        print(USAGE)
        return
    with checks.reported_errors():
        if flags := [arg for arg in args if arg.startswith("-")]:
            raise PrefoptError(
                f"{flags[0]}: python -m prefopt.data.check takes only overrides (key=value), "
                "one configuration at a time"
            )
        cfg = compose_config(args)
        profiles = data_profile(cfg)
    print(format_profile(profiles, cfg))


if __name__ == "__main__":
    main()
