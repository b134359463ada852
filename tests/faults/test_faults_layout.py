"""Fault: a sequence-first activation whose length equals the rows per pass was gated along
the sequence axis, silently. The batch axis now comes from the module's declared layout."""

import pytest
import torch
from torch import nn

from captum_coar import (
    ComponentAblation,
    ComponentAblationRegression,
    ComponentAttributionPatching,
    ComponentGroup,
    ComponentSet,
)


class Encoder(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.batch_first = batch_first
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.enc(x if self.batch_first else x.transpose(0, 1))
        return self.out((h if self.batch_first else h.transpose(0, 1)).mean(1))


def test_sequence_first_layers_are_gated_along_the_batch_when_sizes_coincide():
    torch.manual_seed(0)
    batch_first, seq_first = Encoder(True).eval(), Encoder(False).eval()
    seq_first.load_state_dict(batch_first.state_dict())
    x, target = torch.randn(4, 4, 8), torch.zeros(4, dtype=torch.long)  # seq == batch == 4
    answers = []
    for model in (batch_first, seq_first):
        components = ComponentSet.from_model(model)
        axes = {g.module_name: g.batch_axis for g in components.groups}
        assert axes["enc.linear1"] == (0 if model is batch_first else 1)
        answers.append([
            ComponentAblationRegression(model, components, ablation="zero").attribute(
                x, target=target, n_masks=120, perturbations_per_eval=1),  # 4 rows = seq
            ComponentAblation(model, components, ablation="zero").attribute(x, target=target),
            ComponentAttributionPatching(model, components, ablation="zero").attribute(
                x, target=target)])
    for ours, reference in zip(*answers):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


def test_a_batch_axis_the_activation_does_not_have_is_refused():
    model = nn.Sequential(nn.Linear(3, 4))
    components = ComponentSet(model, [ComponentGroup("0", "neuron", 4, batch_axis=2)])
    with pytest.raises(ValueError, match="batch_axis=2"):
        ComponentAblation(model, components, ablation="zero").attribute(
            torch.randn(2, 3), target=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="count from the front"):
        ComponentGroup("0", "neuron", 4, batch_axis=-1)
