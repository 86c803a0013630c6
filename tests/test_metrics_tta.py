import numpy as np
import pytest
import torch

from raycat import metrics
from raycat.augment import AugmentSpec
from raycat.tta import blend, tta_probs


def test_confusion_matrix_and_derived_metrics_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = metrics.confusion_matrix(pred, labels, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    prec, rec = metrics.precision_recall(cm)
    assert prec == pytest.approx([0.5, 2 / 3, 1.0]) and rec == pytest.approx([0.5, 1.0, 0.5])
    assert metrics.most_confused(cm, ["a", "b", "c"]) == [("a", "b", 1), ("c", "a", 1)]


def test_accuracy_and_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert metrics.accuracy(logits, labels) == pytest.approx(2 / 3)
    probs = torch.softmax(logits, 1)
    assert metrics.nll_of_probs(probs, labels) == pytest.approx(metrics.cross_entropy(logits, labels), rel=1e-5)


def test_precision_undefined_for_a_never_predicted_class():
    prec, rec = metrics.precision_recall(metrics.confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 2))
    assert prec[1] is None and rec[1] == 0.0


def test_tta_calls_the_model_n_plus_one_times_and_blends():
    calls = []

    def predict(x):
        calls.append(x.clone())
        return torch.full((x.shape[0], 2), 0.0) if len(calls) == 1 else torch.tensor([[0.0, 10.0]]).repeat(
            x.shape[0], 1)

    imgs = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    p = tta_probs(predict, imgs, AugmentSpec("side_on", max_zoom=1.2), n_views=4, beta=0.25)
    assert len(calls) == 5
    assert not torch.equal(calls[1], calls[2])  # each view is a fresh augmentation
    plain, aug = torch.tensor([0.5, 0.5]), torch.softmax(torch.tensor([0.0, 10.0]), 0)
    assert torch.allclose(p[0], 0.75 * plain + 0.25 * aug)
    assert torch.allclose(p.sum(1), torch.ones(3))


def test_tta_zero_is_plain_inference():
    calls = []
    imgs = np.zeros((2, 8, 8, 3), np.uint8)
    p = tta_probs(lambda x: calls.append(1) or torch.tensor([[1.0, 0.0]]).repeat(2, 1), imgs, AugmentSpec(), 0)
    assert len(calls) == 1 and torch.allclose(p, torch.softmax(torch.tensor([[1.0, 0.0]]), 1).repeat(2, 1))


def test_blend_beta_extremes():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.equal(blend(a, [b], 0.0), a) and torch.equal(blend(a, [b], 1.0), b)
