"""Reward models (`task=reward`): a Bradley–Terry model of the preference pairs.

- `scores.py`: a sequence classifier's score at each row's last real token (pad == EOS safe);
- `loss.py`: the Bradley–Terry loss, with TRL's margin and reward-centering options;
- `module.py`: `RewardModule`, the LightningModule;
- `report.py`: `RewardReport`, calibration and (toy world) agreement with the true reward;
- `build.py`: the checks and the wiring `training/tasks.py` calls;
- `learned_toy.py`: `judge=learned_toy`, the toy world's learned reward model, cached.
"""
