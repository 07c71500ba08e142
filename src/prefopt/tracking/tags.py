"""The MLflow tag names prefopt sets: a sweep's (shared by the sweep callback and its summary
report) and a resumed run's."""

PARENT_TAG = "mlflow.parentRunId"
TAG_SWEEP_ID = "prefopt.sweep_id"
TAG_ROLE = "prefopt.sweep_role"
TAG_JOB = "prefopt.sweep_job"
TAG_SWEPT_KEYS = "prefopt.swept_keys"
TAG_FAILED_JOB = "prefopt.failed_job."
"""Prefix; the parent gets `prefopt.failed_job.<job number>` = {overrides, error} as JSON."""
TAG_RESUMED_FROM = "prefopt.resumed_from"
"""The checkpoint a resumed training continued from."""
