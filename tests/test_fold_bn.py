"""Folding eval-mode BatchNorms into the convolutions before them (core/fold_bn.py): the scorer's
model gives the same outputs without the BatchNorms' passes, and a body the fold would change is
left as it is."""

import pytest
import torch
import torch.nn as nn

from raycat.core.fold_bn import fold_batchnorm
from raycat.core.model import create_model


def with_trained_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine weights: a fresh BatchNorm is the identity, so folding it
    would prove nothing."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize("arch", ["resnet18", "tf_efficientnet_lite0"])
def test_every_body_batchnorm_is_folded_and_the_outputs_stay_the_same(arch):
    model = with_trained_statistics(create_model(arch, 3))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    example = torch.randn(2, 3, 64, 64)
    folded, n = fold_batchnorm(model, example)
    assert n == n_bn > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    other = torch.randn(4, 3, 64, 64)  # not the example it was checked on
    with torch.no_grad():
        want, got = model(other), folded(other)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_a_fold_keeps_the_channels_last_layout():
    model = with_trained_statistics(create_model("tf_efficientnet_lite0", 2)).to(memory_format=torch.channels_last)
    folded, n = fold_batchnorm(model, torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    convs = [m.weight for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert n > 0 and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


class ConvOutputUsedTwice(nn.Module):
    """The convolution's output goes to the BatchNorm and is also added back: folding the
    BatchNorm into the convolution would change the residual too."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_convolution_whose_output_is_also_used_elsewhere_is_left_unfolded():
    model = with_trained_statistics(ConvOutputUsedTwice())
    example = torch.randn(2, 3, 8, 8)
    folded, n = fold_batchnorm(model, example)
    assert n == 0 and folded is model
    with torch.no_grad():
        assert torch.equal(folded(example), model(example))


def test_a_batchnorm_that_does_not_read_a_convolution_is_left_in_place():
    model = with_trained_statistics(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4)))
    folded, n = fold_batchnorm(model, torch.randn(2, 3, 8, 8))
    assert n == 0 and isinstance(folded[2], nn.BatchNorm2d)
