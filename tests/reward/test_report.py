"""The calibration the reward report logs, worked by hand."""

import pytest
import torch

from prefopt.reward.report import both_orders, calibration


def test_calibration_bins_and_expected_calibration_error_by_hand():
    """Two bins of [0, 1]. Predictions 0.2, 0.4 (bin 0: mean 0.3) with outcomes 0, 1 (mean 0.5);
    predictions 0.6, 0.8, 0.9 (bin 1: mean 0.7667) with outcomes 1, 1, 1 (mean 1).
    ECE = 2/5·|0.3 − 0.5| + 3/5·|0.76667 − 1| = 0.08 + 0.14 = 0.22."""
    got = calibration(torch.tensor([0.2, 0.4, 0.6, 0.8, 0.9]), torch.tensor([0, 1, 1, 1, 1.0]), 2)
    assert got.counts == [2, 3]
    assert got.predicted == pytest.approx([0.3, 0.766667], rel=1e-5)
    assert got.observed == pytest.approx([0.5, 1.0])
    assert got.error == pytest.approx(0.22, rel=1e-5)


def test_each_pair_counts_in_both_orders():
    """A margin m gives (σ(m), 1) and (σ(−m), 0). Margins 0 and 2: predictions 0.5, 0.5 (one
    bin, observed 1/2: no error), σ(2) = 0.880797 observed 1 and σ(−2) = 0.119203 observed 0
    (an error of 0.119203 each); ECE = 2/4·0 + 1/4·0.119203 + 1/4·0.119203 = 0.059601."""
    predicted, observed = both_orders(torch.tensor([0.0, 2.0]))
    assert predicted.tolist() == pytest.approx([0.5, 0.880797, 0.5, 0.119203], rel=1e-5)
    assert observed.tolist() == [1, 1, 0, 0]
    assert calibration(predicted, observed, 10).error == pytest.approx(0.059601, rel=1e-4)
