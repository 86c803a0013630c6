import numpy as np
import pytest
import torch

from raycat.core import metrics
from raycat.core.augment import AugmentSpec, normalize
from raycat.core.evaluate import evaluate, view_probs
from raycat.core.tta import blend, tta_views


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


def test_tta_calls_the_model_once_per_view_and_blends():
    calls = []

    def predict(x):
        calls.append(x.clone())
        return torch.full((x.shape[0], 2), 0.0) if len(calls) == 1 else torch.tensor([[0.0, 10.0]]).repeat(
            x.shape[0], 1)

    imgs = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 16, 16), dtype=np.uint8))
    views = tta_views(AugmentSpec("side_on", max_zoom=1.2), 4, torch.Generator().manual_seed(0))
    p = view_probs(predict, imgs, views, beta=0.25)
    assert len(calls) == 5
    assert torch.allclose(calls[0], normalize(imgs))  # the plain view comes first
    assert not torch.equal(calls[1], calls[2])  # each augmented view is a fresh draw
    plain, aug = torch.tensor([0.5, 0.5]), torch.softmax(torch.tensor([0.0, 10.0]), 0)
    assert torch.allclose(p[0], 0.75 * plain + 0.25 * aug)
    assert torch.allclose(p.sum(1), torch.ones(3))


def test_no_augmented_views_is_plain_inference_over_every_batch():
    calls = []
    batches = [(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1])),
               (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.tensor([1]))]
    forward = lambda x: calls.append(1) or torch.tensor([[1.0, 0.0]]).repeat(len(x), 1)
    p, y = evaluate(forward, batches, tta_views(AugmentSpec(), 0, torch.Generator()), n_classes=2)
    assert len(calls) == 2 and y.tolist() == [0, 1, 1]
    assert torch.allclose(p, torch.softmax(torch.tensor([[1.0, 0.0]]), 1).repeat(3, 1))
    empty_p, empty_y = evaluate(forward, [], tta_views(AugmentSpec(), 0, torch.Generator()), n_classes=2)
    assert empty_p.shape == (0, 2) and empty_y.shape == (0,)


def test_top_losses_are_the_most_confidently_wrong_and_skip_unknown_labels():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.01, 0.99], [0.5, 0.5]])
    labels = torch.tensor([0, 0, 0, -1, 1])
    top = metrics.top_losses(probs, labels, 2)
    assert [i for i, _ in top] == [1, 4]  # -log 0.2 > -log 0.5; row 3 has no label
    assert top[0][1] == pytest.approx(-np.log(0.2), rel=1e-5)
    low = metrics.least_confident(probs, 2)
    assert [i for i, _ in low] == [4, 2] and low[0][1] == pytest.approx(0.5)


def test_worth_a_look_rows_are_named_by_path_and_class():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    labels = torch.tensor([0, 0, -1, 1])
    look = metrics.worth_a_look(probs, labels, 2)
    assert [r[1:4] for r in look["top_losses"]] == [[1, 0, 1], [3, 1, 1]]
    assert look["top_losses"][0][4] == pytest.approx(0.8)  # the probability of what it predicted
    assert [r[1:] for r in look["least_confident"]] == [[3, 1, 1], [2, -1, 0]]
    named = metrics.name_rows(look["least_confident"], ["a.png", "b.png", "c.png", "d.png"], ["cat", "dog"])
    assert [r[1:] for r in named] == [["d.png", "dog", "dog"], ["c.png", None, "cat"]]
    assert metrics.worth_a_look(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 3) == \
        {"top_losses": [], "least_confident": []}


def test_keep_top_merges_candidates_in_bounded_memory():
    a = [(0.9, "a"), (0.1, "b")]
    b = [(0.5, "c"), (0.95, "d"), (0.2, "e")]
    assert metrics.keep_top(a + b, 3, key=lambda r: r[0]) == [(0.95, "d"), (0.9, "a"), (0.5, "c")]
    assert metrics.keep_top(a + b, 2, key=lambda r: r[0], largest=False) == [(0.1, "b"), (0.2, "e")]


def test_blend_beta_extremes():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.equal(blend(a, [b], 0.0), a) and torch.equal(blend(a, [b], 1.0), b)


def test_tta_from_plain_probabilities_in_hand_equals_the_blended_pass():
    """The recipe's final TTA scores the augmented views alone and blends them with the plain
    probabilities the best epoch's validation gave: the same numbers as one pass over every view."""
    from raycat.core.tta import augmented_views

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    spec = AugmentSpec("side_on", 1.1, mean=(0.5,) * 3, std=(0.5,) * 3)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    batches = [(images[:6], torch.zeros(6)), (images[6:], torch.ones(4))]
    whole, labels = evaluate(model, batches, tta_views(spec, 3, torch.Generator().manual_seed(1)), 4)
    plain, _ = evaluate(model, batches, tta_views(spec, 0, torch.Generator()), 4)
    mean, mean_labels = evaluate(model, batches, augmented_views(spec, 3, torch.Generator().manual_seed(1)), 4,
                                 blended=False)
    assert torch.equal(mean_labels, labels)
    assert torch.allclose(blend(plain, [mean]), whole, atol=1e-6)
    assert not torch.allclose(mean, plain, atol=1e-3)  # the views do differ: the check can tell
