"""The aligned policy as an MLflow 3 logged model: linked to its run, carrying the run's final
validation and evaluation metrics, and registered as a new version of `model.register_as`.

What is logged is what `model.export.export_policy` wrote: the merged model when a LoRA run
merged its adapter, else the exported folder (a full checkpoint, or a LoRA adapter whose base
model is referenced by its path or hub id, never copied). It goes in through MLflow's
transformers flavour, so `mlflow.transformers.load_model("models:/<name>/<version>")` gives a
text-generation pipeline and `mlflow.pyfunc.load_model` a model that maps prompts to texts.

Why the folder is loaded rather than handed over as a path: MLflow 3.17's local-checkpoint path
(`log_model("<folder>", task=...)`) fails under transformers 5 (`check_task` there names the
pipeline class as a string), so the folder is loaded on the CPU and logged as a pipeline's
components (`LOCAL_CHECKPOINT_WORKS` in the tests says when that changes).

One copy of the weights: the artifact store gets its own copy (a registry version must outlive
the run's output folder and move with a tracking server). Where that store is a folder on the
same filesystem as the export, each exported weight file whose bytes equal the logged one is
replaced by a hard link to it (`share_weight_files`), so the disk holds the bytes once and either
folder can be deleted alone. That is safe because nothing writes into an exported file again:
a later export replaces files, it does not rewrite them in place. With a remote artifact store
the local export stays the one local copy. MLflow stages the model in a temporary folder while
it uploads it; that copy is gone when `log_aligned_model` returns.

Tracking must never fail a run whose training succeeded: when the store is unreachable (the
run's calls are being buffered, `tracking.offline`) or the logging fails, one warning says where
the export is (the run carries it as the `prefopt.export_dir` tag) and the run goes on.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

from lightning.pytorch.loggers import Logger, MLFlowLogger

from prefopt.config.schema import ModelConfig
from prefopt.errors import PrefoptError
from prefopt.tracking.offline import unreachable

log = logging.getLogger("prefopt.tracking")

LOGGED_MODEL_NAME = "aligned-policy"
"""The logged model's name in the run's Models column."""
TASK = "text-generation"
SUMMARY_PREFIXES = ("val/", "eval/")
"""The run's metrics whose final values are linked to the model (those the run's summary shows)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin")
ADAPTER_CONFIG = "adapter_config.json"
"""In an exported folder: a LoRA adapter (PEFT), not a full checkpoint."""
_COMPARE_BLOCK = 16 << 20


def check_model_logging(cfg_model: ModelConfig, export: bool) -> None:
    """Before the run: a registered name needs a logged model, which needs an export."""
    if cfg_model.register_as and not (export and cfg_model.log_model):
        raise PrefoptError(
            f"model.register_as={cfg_model.register_as}: registering needs the exported model "
            "logged; set export=true and model.log_model=true, or drop model.register_as"
        )


def log_aligned_model(
    logger: Logger | None, written: Mapping[str, Path], cfg_model: ModelConfig, step: int
) -> str | None:
    """Log the exported policy (`written`: export_policy's {tag: folder}) to the logger's run at
    `step` and register it under `cfg_model.register_as`; its `models:/` URI, or None when
    nothing was logged. Never raises."""
    if not written or not cfg_model.log_model or not isinstance(logger, MLFlowLogger):
        return None
    folder = Path(written.get("prefopt.merged_dir") or written["prefopt.export_dir"]).resolve()
    if getattr(logger, "offline", False):
        log.warning("MLflow is unreachable: the aligned model is not logged; it is in %s", folder)
        return None
    try:
        return _log_model(logger, folder, cfg_model.register_as, step)
    except Exception as error:
        why = "MLflow is unreachable" if unreachable(error) else "logging it failed"
        reason = " ".join(str(error).split())[:200]
        log.warning("the aligned model is not logged (%s: %s); it is in %s", why, reason, folder)
        log.debug("logging the aligned model failed", exc_info=True)
        return None


def _log_model(logger: MLFlowLogger, folder: Path, register_as: str | None, step: int) -> str:
    import mlflow
    from mlflow.entities import LoggedModelStatus

    client = mlflow.MlflowClient(logger.tracking_uri)
    run_id = logger.run_id
    with _global_tracking_uri(logger.tracking_uri):
        # Created here, in the run's experiment: `log_model` alone would put it in the active
        # experiment, which is the default one outside `mlflow.start_run`.
        model = mlflow.initialize_logged_model(
            name=LOGGED_MODEL_NAME,
            source_run_id=run_id,
            experiment_id=logger.experiment_id,
            params=client.get_run(run_id).data.params,
            model_type="causal-lm",
        )
        try:
            components, base_model_path = _pipeline_components(folder)
            adapter = (folder / ADAPTER_CONFIG).is_file()
            with _quiet_license_lookup():
                info = mlflow.transformers.log_model(
                    components,
                    name=LOGGED_MODEL_NAME,
                    task=TASK,
                    model_id=model.model_id,
                    run_id=run_id,
                    step=step,  # links what the run logged at this step (the last evaluation)
                    registered_model_name=register_as or None,
                    model_card=_model_card(run_id, folder),
                    base_model_path=base_model_path,
                    pip_requirements=_requirements(peft=adapter),
                )
        except BaseException:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    _link_final_metrics(client, run_id, model.model_id)
    location = client.get_logged_model(model.model_id).artifact_location
    shared = share_weight_files(folder, location)
    version = f", registered as {register_as} version {info.registered_model_version}"
    log.info(
        "aligned model logged as %s%s%s",
        info.model_uri,
        version if register_as else "",
        f" (weights stored once: {', '.join(shared)} hard-linked)" if shared else "",
    )
    return info.model_uri


def _pipeline_components(folder: Path) -> tuple[dict, str | None]:
    """The model and tokenizer in `folder`, and for a LoRA adapter the base model's folder
    (None for a full checkpoint, or a base named by hub id, which MLflow references by name)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        return {"model": AutoModelForCausalLM.from_pretrained(folder), "tokenizer": tokenizer}, None
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(folder)
    base = model.peft_config["default"].base_model_name_or_path
    return {"model": model, "tokenizer": tokenizer}, base if Path(base).is_dir() else None


def _link_final_metrics(client, run_id: str, model_id: str) -> None:
    """Link each summary metric's last logged value to the model (MLflow links those logged at
    the model's step; a validation that ran a few steps earlier is linked here)."""
    from mlflow.entities import Metric

    linked = {m.key for m in client.get_logged_model(model_id).metrics or []}
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(SUMMARY_PREFIXES)]
    last = [
        max(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        for key in sorted(keys)
        if key not in linked
    ]
    if last:
        client.log_batch(
            run_id,
            metrics=[
                Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id)
                for m in last
            ],
        )


def share_weight_files(export_dir: Path, artifact_location: str) -> list[str]:
    """Replace each weight file in `export_dir` by a hard link to the byte-identical file the
    logged model holds, when its artifact location is a local folder on the same filesystem;
    the names of the files now stored once."""
    parsed = urlparse(artifact_location)
    if parsed.scheme not in ("", "file"):
        return []  # a remote store: its copy is not on this machine
    artifacts = Path(unquote(parsed.path))
    logged = {p.name: p for p in artifacts.rglob("*") if p.suffix in WEIGHT_SUFFIXES}
    shared = []
    for exported in sorted(export_dir.iterdir()):
        twin = logged.get(exported.name)
        if exported.suffix not in WEIGHT_SUFFIXES or twin is None:
            continue
        if os.path.samefile(exported, twin):
            shared.append(exported.name)
        elif same_bytes(exported, twin):
            try:
                _replace_with_link(exported, twin)
            except OSError as error:  # another filesystem, or one without hard links
                log.info("%s stays a separate copy of %s (%s)", exported, twin, error)
                continue
            shared.append(exported.name)
    return shared


def same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block = fa.read(_COMPARE_BLOCK)
            if block != fb.read(_COMPARE_BLOCK):
                return False
            if not block:
                return True


def _replace_with_link(path: Path, target: Path) -> None:
    """`path` becomes a hard link to `target` in one rename: a reader sees one file or the other."""
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    os.unlink(staging)
    try:
        os.link(target, staging)
        os.replace(staging, path)
    finally:
        if os.path.lexists(staging):
            os.unlink(staging)


def _model_card(run_id: str, folder: Path):
    """A card of its own: without one MLflow asks the Hugging Face hub for the card of the
    model's name, which here is a local folder."""
    from huggingface_hub import ModelCard

    return ModelCard(
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n"
        f"Policy aligned by prefopt in MLflow run {run_id}, exported to {folder}.\n"
    )


def _requirements(peft: bool) -> list[str]:
    """Pinned from this environment: MLflow would otherwise load the model in a subprocess to
    find them, the slowest part of logging a small model."""
    names = ["torch", "transformers", "tokenizers", "safetensors"] + (["peft"] if peft else [])
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in names]


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent functions (`log_model` among them) write to the global tracking URI:
    this run's store while they do, whatever it was before."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


class _DropLicenseNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "license information" not in record.getMessage()


@contextlib.contextmanager
def _quiet_license_lookup() -> Iterator[None]:
    """MLflow warns on every save that a local folder has no hub license: true, and no news."""
    notice = _DropLicenseNotice()
    flavour_log = logging.getLogger("mlflow.transformers")
    flavour_log.addFilter(notice)
    try:
        yield
    finally:
        flavour_log.removeFilter(notice)
