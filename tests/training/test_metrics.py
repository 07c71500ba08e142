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
    # the margin, which these metrics leave out, is derived from the two class means
    assert list(means) == ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins"]
    margin = means.pop("rewards/margins")[0]
    assert margin == means["rewards/chosen"][0] - means["rewards/rejected"][0]
    for name, (mean, _) in means.items():
        assert torch.equal(mean, metrics[name].float().nanmean()), name  # v, not (v × 3) / 3
    # a per-example vector counts the examples it has a value for
    assert [int(examples) for _, examples in means.values()] == [3, 3, 2]


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


def test_kto_class_means_weigh_each_example_once_not_each_batch():
    """Two validation batches of 8 examples each: the first holds 1 desirable example (reward
    8), the second 7 (rewards 0, 1, ..., 6). The epoch's `rewards/chosen` is the mean over the 8
    desirable examples, (8 + 21) / 8 = 3.625, not the mean of the batch means (8 + 3) / 2 = 5.5
    (nor that weighted by batch size, also 5.5). Undesirable rewards: 7 of −1, then 1 of −9:
    (−7 − 9) / 8 = −2. The margin is the difference of the class means, 5.625."""
    from prefopt.losses import CompletionLogps, KTOLoss, UnpairedLogps

    def batch(rewards, desirable):
        summed = torch.tensor(rewards)  # β = 1, reference 0: rewards are the log-probs
        side = UnpairedLogps(
            CompletionLogps(summed, torch.ones(8)),
            CompletionLogps(torch.zeros(8), torch.ones(8)),
            torch.tensor(desirable),
        )
        zero = UnpairedLogps(
            CompletionLogps(torch.zeros(8), torch.ones(8)),
            CompletionLogps(torch.zeros(8), torch.ones(8)),
            torch.tensor(desirable),
        )
        return KTOLoss(beta=1.0)(side, zero).metrics

    first = batch([8.0] + [-1.0] * 7, [True] + [False] * 7)
    second = batch([0.0, 1, 2, 3, 4, 5, 6, -9], [True] * 7 + [False])
    for metric in (EpochMeans(), StepMeans()):
        if isinstance(metric, EpochMeans):
            metric.update(first, 8)
            metric.update(second, 8)
        else:  # a step's means over ranks: the same sums, one rank's per-rank state each
            metric.update(first, 8)
            state = metric.per_rank
            metric.update(second, 8)
            metric.per_rank = torch.cat([state, metric.per_rank])  # as gathered from 2 ranks
        means = metric.compute()
        torch.testing.assert_close(means["rewards/chosen"][0], torch.tensor(3.625))
        torch.testing.assert_close(means["logps/chosen"][0], torch.tensor(3.625))
        assert int(means["rewards/chosen"][1]) == 8
        torch.testing.assert_close(means["rewards/rejected"][0], torch.tensor(-2.0))
        torch.testing.assert_close(means["rewards/margins"][0], torch.tensor(5.625))


def test_mean_across_ranks_is_the_value_itself_on_one_process():
    value = torch.tensor(0.123456789, dtype=torch.float64)
    assert torch.equal(mean_across_ranks(value), value.float())
    vector = torch.tensor([0.25, 1.0])  # element by element (KTO's estimate and its rank count)
    assert torch.equal(mean_across_ranks(vector), vector)
