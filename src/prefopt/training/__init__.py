"""Training: the LightningModule, checkpoints and resuming, strategies for several devices,
cross-rank metrics, and the guards that turn faults into clear stops."""
