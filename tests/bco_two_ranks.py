"""One rank of tests/training/test_loss_state.py's BCO check: `python bco_two_ranks.py RANK PORT`.

A fresh interpreter per rank (as tests/kto_two_ranks.py). Two training steps of BCO on this
rank's own policy and batch; prints the baseline after each step and this rank's own batch
mean rewards as JSON.
"""

import json
import sys

import torch
import torch.distributed as dist

from conftest import hand_batch, tiny_llama  # tests/ is on sys.path: this script runs from there
from prefopt.config.schema import OptimConfig
from prefopt.losses import BCOPairLoss
from prefopt.reference.online import OnlineReference
from prefopt.training.module import PreferenceModule


def main(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    module = PreferenceModule(
        tiny_llama(seed=1 + rank),  # each rank's policy differs: different local rewards
        BCOPairLoss(beta=0.5),
        OptimConfig(lr=1e-3),
        reference=OnlineReference(tiny_llama(seed=0)),
    )
    local_means, baselines = [], []
    for step in range(2):
        batch = hand_batch()
        ids = batch["input_ids"]  # another batch each step: shift the ordinary tokens
        batch["input_ids"] = torch.where(ids > 4, ids + step, ids)
        with torch.no_grad():
            out = module.compute_loss(batch, "train")
        rewards = torch.cat([out.metrics["rewards/chosen"], out.metrics["rewards/rejected"]])
        local_means.append(float(rewards.mean()))
        baselines.append(float(out.metrics["reward_baseline"]))
    print(json.dumps({"local_means": local_means, "baselines": baselines}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
