"""Metric means over examples (torchmetrics): on one process, the values logged before them."""

import math

import torch

from prefopt.training.metrics import EpochMeans, StepMeans, mean_across_ranks


def test_a_step_logs_each_metric_s_own_batch_mean_bit_for_bit():
    torch.manual_seed(0)
    metrics = {
        "loss": torch.rand(()),
        "rewards/chosen": torch.randn(3),
        "rewards/rejected": torch.tensor([float("nan"), 0.3, 0.7]),  # partly NaN: nanmean
        "rewards/undesirable": torch.full((3,), float("nan")),  # no such example this batch
    }
    step = StepMeans()
    for _ in range(2):  # a new step replaces the last one
        step.update(metrics, examples=3)
        means = step.compute()
    assert list(means) == ["loss", "rewards/chosen", "rewards/rejected"]
    for name, (mean, examples) in means.items():
        assert torch.equal(mean, metrics[name].float().nanmean()), name  # v, not (v × 3) / 3
        assert examples == 3


def test_a_nan_loss_is_logged_as_nan():
    step = StepMeans()
    step.update({"loss": torch.tensor(float("nan")), "kl": torch.tensor(0.5)}, examples=2)
    means = step.compute()
    assert math.isnan(means["loss"][0]) and means["loss"][1] == 2
    assert means["kl"][0] == 0.5


def test_validation_means_weigh_each_batch_by_its_examples():
    """Batch 1: loss values 1 and 3 (mean 2) over 2 examples; batch 2: loss 4 over 1 example:
    (2·2 + 4·1) / 3 = 8/3. The undesirable reward exists in batch 2 only: 5 over 1 example."""
    epoch = EpochMeans()
    nan = float("nan")
    epoch.update({"loss": torch.tensor([1.0, 3.0]), "undesirable": torch.tensor([nan, nan])}, 2)
    epoch.update({"loss": torch.tensor([4.0]), "undesirable": torch.tensor([5.0])}, 1)
    means = epoch.compute()
    assert means["loss"][0] == torch.tensor(8.0) / 3 and means["loss"][1] == 3
    assert means["undesirable"][0] == 5.0 and means["undesirable"][1] == 1

    epoch.reset()  # a new validation starts from nothing
    epoch.update({"loss": torch.tensor([7.0]), "undesirable": torch.tensor([nan])}, 5)
    assert epoch.compute() == {"loss": (torch.tensor(7.0), torch.tensor(5.0))}


def test_validation_means_are_the_mean_over_every_example_of_every_batch():
    """Batches of 3, 7, 5 and 6 examples, one value each: the epoch's mean is the plain mean
    of all 21 values (worked out here in float64, apart from the code's per-batch sums)."""
    torch.manual_seed(1)
    batches = [torch.randn(n) for n in (3, 7, 5, 6)]
    epoch = EpochMeans()
    for values in batches:
        epoch.update({"margin": values}, len(values))
    mean, examples = epoch.compute()["margin"]
    every_example = [float(v) for values in batches for v in values]
    expected = math.fsum(every_example) / len(every_example)
    assert math.isclose(float(mean), expected, rel_tol=1e-6, abs_tol=1e-7)
    assert examples == 21


def test_mean_across_ranks_is_the_value_itself_on_one_process():
    value = torch.tensor(0.123456789, dtype=torch.float64)
    assert torch.equal(mean_across_ranks(value), value.float())
