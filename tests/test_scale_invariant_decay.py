"""A decay of its own for the scale-invariant weights (``optimizer.scale_invariant_weight_decay``): the
rotation-matched AdamW of the equilibrium table decays the weights followed by a normalisation layer more, and
every other parameter as AdamP's unprojected ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adamp_repro.models import build_model
from adamp_repro.optim import build_optimizer, param_groups
from adamp_repro.train.diagnostics import normalised_weights
from tests.conftest import compose_config


def test_matched_adamw_decays_the_normalised_weights_at_their_own_rate() -> None:
    cfg = compose_config(["experiment=equilibrium", "optimizer=adamw_matched"])
    model = build_model(cfg.model, 10, [0.5] * 3, [0.25] * 3)
    invariant = normalised_weights(model)
    optimizer = build_optimizer(cfg.optimizer, model, invariant)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = (
            cfg.optimizer.scale_invariant_weight_decay if name in invariant else cfg.optimizer.weight_decay
        )
        assert decay_of[id(p)] == pytest.approx(expected), name
    assert len(invariant) == 19  # every conv of ResNet-20 feeds a BatchNorm; the classifier does not
    assert "net.fc.weight" not in invariant and decay_of[id(model.net.fc.weight)] == 1.0


def test_unset_leaves_one_group_and_set_without_names_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert len(param_groups(model, 0.1)) == 1
    with pytest.raises(ValueError, match="no scale-invariant weight was named"):
        param_groups(model, 0.1, scale_invariant_weight_decay=0.5)
    groups = param_groups(model, 0.1, scale_invariant=["0.weight"], scale_invariant_weight_decay=0.5)
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(3, 0.1), (1, 0.5)]
