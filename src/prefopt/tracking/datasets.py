"""The run's datasets: what it trained and validated on, as MLflow dataset inputs.

Each split becomes an `mlflow.entities.Dataset` logged as an input of the run with the context
`train` or `validation` (the runs table's Dataset column, the run page's Datasets):

- name: where the rows came from and the split's role, e.g. `toy world [train]`,
  `HuggingFaceH4/ultrafeedback_binarized [validation]`, `pairs.jsonl [train]`;
- digest: the prepared data's cache key (the folder under `$PREFOPT_CACHE/data/prepared`), which
  changes whenever any token id could;
- source: the local file or folder (MLflow's `local` source), or the hub dataset and its split
  (`hugging_face`);
- profile: the counts of preparation (rows, pairs or examples, dropped per reason, empty
  completions, KTO's desirable share) and the mean prompt and completion tokens.

A resumed run already has its inputs: a context it has is not logged again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag, Run
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

if TYPE_CHECKING:
    from prefopt.data.summary import SplitSummary

log = logging.getLogger("prefopt.tracking")

CONTEXTS = {"train": "train", "val": "validation"}
"""The data module's split -> the dataset input's context."""


def dataset_entity(summary: SplitSummary) -> Dataset:
    """One split as an MLflow dataset (see the module's docstring)."""
    origin = summary.origin
    role = CONTEXTS[summary.split]
    if origin.kind == "hub":
        source: Any = HuggingFaceDatasetSource(path=origin.location, split=origin.split)
        source_type, label = "hugging_face", origin.location
    else:
        source = LocalArtifactDatasetSource(uri=origin.location)
        source_type = "local"
        label = "toy world" if origin.kind == "toy" else Path(origin.location).name
    profile: dict[str, Any] = {"layout": summary.layout, **summary.counts}
    profile.update({f"mean_{name}_tokens": v for name, v in summary.mean_tokens.items()})
    if origin.split is not None:
        profile["dataset_split"] = origin.split
    if origin.held_out is not None:
        profile["held_out_fraction"] = origin.held_out
    if origin.toy_world is not None:
        profile["toy_world"] = origin.toy_world
    return Dataset(
        name=f"{label} [{role}]",
        digest=summary.key,
        source_type=source_type,
        source=source.to_json(),
        profile=json.dumps(profile),
    )


def log_datasets(logger: Logger | None, summaries: Sequence[SplitSummary]) -> None:
    """Log each split as a dataset input of the logger's run (context `train` / `validation`),
    except a context the run has already (a resumed run); nothing for another kind of logger."""
    if not isinstance(logger, MLFlowLogger) or rank_zero_only.rank != 0:
        return
    run = logger.experiment.get_run(logger.run_id)
    logged = run_datasets(run) if run is not None else {}
    inputs = []
    for summary in summaries:
        context = CONTEXTS[summary.split]
        dataset = dataset_entity(summary)
        if context in logged:
            if logged[context]["digest"] != dataset.digest:
                log.warning(
                    "resumed on other %s data (prepared key %s, the run's is %s): the run keeps "
                    "its first dataset",
                    context,
                    dataset.digest,
                    logged[context]["digest"],
                )
            continue
        inputs.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    if inputs:
        logger.experiment.log_inputs(logger.run_id, datasets=inputs)


def run_datasets(run: Run) -> dict[str, dict[str, Any]]:
    """{context: {name, digest, source_type, source, profile}} of a run's dataset inputs, with
    `source` and `profile` parsed from their JSON."""
    found = {}
    for dataset_input in run.inputs.dataset_inputs if run.inputs else []:
        tags = {tag.key: tag.value for tag in dataset_input.tags}
        dataset = dataset_input.dataset
        found[tags.get(MLFLOW_DATASET_CONTEXT, "")] = {
            "name": dataset.name,
            "digest": dataset.digest,
            "source_type": dataset.source_type,
            "source": json.loads(dataset.source),
            "profile": json.loads(dataset.profile) if dataset.profile else {},
        }
    return found
