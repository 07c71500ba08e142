"""One process of tests/tracking/test_concurrent_runs.py: `python store_worker.py URI DIR NAME`.

Imports everything first, says it is ready (`DIR/ready-NAME`), waits for `DIR/go`, then lives a
whole run through prefopt's tracking functions: the run created, its config, one metric per
step, its end status. The test releases every worker at once on a fresh SQLite store.
"""

import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from prefopt.config.schema import LoggerConfig
from prefopt.tracking import tracked_run

STEPS = 30

uri, folder, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
(folder / f"ready-{name}").touch()
while not (folder / "go").exists():
    time.sleep(0.002)
config = OmegaConf.create({"worker": name, "seed": 0})
logger_cfg = LoggerConfig(tracking_uri=uri)
with tracked_run(
    logger_cfg, name, config, params={"worker": name}, offline_dir=folder / name
) as log:
    for step in range(STEPS):
        log.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    if log.offline:  # a locked database taken for an outage: the run would miss its metrics
        sys.exit(f"{name}: went offline")
print(log.run_id)
