"""Online preference optimisation (`loop=online`): rounds of sample -> judge -> train.

Each round takes `loop.prompts_per_round` training prompts, samples `loop.samples_per_prompt`
completions of each from the current policy, scores them with the judge, pairs them (best vs
worst, or all ranked; KTO: labelled by a threshold or the prompt's median; RLOO: every sample
with its leave-one-out advantage) and trains
`loop.steps_per_round` optimizer steps of the run's loss on them, until `trainer.max_steps`.

- `pairs.py`: judged samples -> pairs / labelled examples -> a round's batches;
- `samples.py`: for an on-policy loss (`loss=rloo`), every sample with its advantage, and
  π_old's log-probs of each batch;
- `rounds.py`: one round (`Round`, `RoundMaker`): sampling, judging, KL, reference log-probs;
- `datamodule.py`: `OnlineDataModule`, one Lightning epoch per round, resumable mid-round;
- `reference.py`: `RoundReference`, the round's reference log-probs where they were computed
  with it;
- `callback.py`: `OnlineSummary`, the reward-vs-KL figure and the last round's pairs;
- `build.py`: the checks and the wiring `prefopt.train` calls.
"""

from prefopt.online.build import (
    build_online_data,
    check_loop_config,
    is_online,
    online_trainer_config,
)
from prefopt.online.callback import OnlineSummary
from prefopt.online.datamodule import OnlineDataModule
from prefopt.online.reference import RoundReference
from prefopt.online.rounds import Round, RoundMaker

__all__ = [
    "OnlineDataModule",
    "OnlineSummary",
    "Round",
    "RoundMaker",
    "RoundReference",
    "build_online_data",
    "check_loop_config",
    "is_online",
    "online_trainer_config",
]
