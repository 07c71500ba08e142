"""Hybrid models (attention beside a state-space layer) are never packed."""

import logging

from prefopt.config.schema import ModelConfig
from prefopt.model.loading import load_causal_lm
from prefopt.model.packing import PairPacking

from .conftest import build_checkpoint


def test_a_state_space_layer_is_refused_before_any_probe(tmp_path, caplog):
    """Falcon-H1's Mamba mixer carries the chosen completion into the rejected one in a
    shared-prompt row. On the matrix's tiny random weights the leak is ~1e-4 on a summed
    log-prob, close to the probe's tolerance (the probe alone accepted it before), so the
    refusal must not depend on the probe."""
    path = str(build_checkpoint("falcon_h1", tmp_path).path)
    model = load_causal_lm(path, ModelConfig(path=path)).eval()
    packing = PairPacking("auto", padding_free=False)
    with caplog.at_level(logging.INFO, logger="prefopt.packing"):
        assert not packing.supported(model, 3)
    assert any("state-space" in record.getMessage() for record in caplog.records)
