"""Tracking: the only place that talks to MLflow. Runs (naming, config, tags, status), the
offline buffer and its sync, sweeps (one parent run per --multirun) and their summary report."""
