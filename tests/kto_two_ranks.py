"""One rank of tests/test_scale.py's KTO check: `python kto_two_ranks.py RANK PORT`.

A fresh interpreter per rank (forking a process whose OpenMP pool already ran can deadlock).
Prints this rank's z_ref, local KL estimate, loss and cross-rank metric means (validation's
and a training step's) as JSON.
"""

import json
import sys

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from conftest import tiny_llama  # tests/ is on sys.path: this script runs from there
from prefopt.losses.kto import KTOLoss
from prefopt.model.logprobs import completion_logps
from prefopt.reference.online import OnlineReference
from prefopt.training.metrics import EpochMeans, StepMeans
from prefopt.training.module import PreferenceModule


def main(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    # 2 examples, then the same prompts with each other's completion (KTO's mismatched rows)
    ids = torch.tensor(
        [[1, 5, 6, 7, 8, 2], [1, 9, 10, 11, 2, 0], [1, 5, 6, 10, 11, 2], [1, 9, 7, 8, 2, 0]]
    )
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[0, 3:6] = completion[1, 2:5] = completion[2, 3:6] = completion[3, 2:5] = True
    batch = {
        "input_ids": ids + rank,
        "attention_mask": (ids != 0).long(),
        "completion_mask": completion,
        "desirable": torch.tensor([True, rank == 0]),
    }
    module = PreferenceModule(
        tiny_llama(seed=1 + rank),  # each rank's policy differs: different local KLs
        KTOLoss(beta=0.1),
        OmegaConf.create({"lr": 1e-3}),
        reference=OnlineReference(tiny_llama(seed=0), chunk_size=None),
        chunk_size=None,
    )
    out = module.compute_loss(batch)
    metrics = {"loss": out.loss, "rewards/rejected": out.metrics["rewards/rejected"]}
    means = {}
    for kind, metric in (("means", EpochMeans()), ("step_means", StepMeans())):
        metric.update(metrics, 2 + rank)
        means[kind] = {k: [float(v[0]), float(v[1])] for k, v in metric.compute().items()}
    mismatched = {k: batch[k][2:] for k in ("input_ids", "attention_mask", "completion_mask")}
    with torch.no_grad():
        local_kl = (
            completion_logps(module.policy, mismatched, None).summed
            - completion_logps(module.reference.model, mismatched, None).summed
        ).mean()
    print(
        json.dumps(
            {
                "z_ref": float(out.metrics["kl"]),
                "local_kl": float(local_kl),
                "loss": float(out.loss),
                **means,
            }
        )
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
