"""The classifier: a torchvision ResNet body, concat pooling and fast.ai's head, in 3 layer groups.

Layer groups are cut by a rule, not by indices: the body's residual stages (`layer1..layerN`) are
split in half, so group 0 is the stem plus the first half of the stages, group 1 the second half,
and group 2 the head. That holds for every supported architecture.

The `small` stem (a 3x3 stride-1 convolution and no max-pool) is for images of 64 px or less:
ImageNet's stem (a 7x7 stride-2 convolution, then a max-pool) divides the side by 4 before the
first residual stage, which leaves a 7x7 map from a 28 px garment. `small_pool` keeps the max-pool:
a quarter of `small`'s compute for a 14x14 map at the first stage.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from raycat.errors import BadInput

STEMS = ("imagenet", "small", "small_pool")


class WeightsError(BadInput):
    """--weights can't be used; the message says why and what to do instead."""


class ConcatPool(nn.Module):
    """Average and max pooling side by side: twice the features, as in fast.ai."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)


def make_head(n_features: int, n_classes: int, hidden: int = 512, dropout: tuple[float, float] = (0.25, 0.5)):
    """fast.ai's head on pooled features: BN, dropout, linear, ReLU, BN, dropout, linear."""
    return nn.Sequential(
        nn.BatchNorm1d(n_features),
        nn.Dropout(dropout[0]),
        nn.Linear(n_features, hidden),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden),
        nn.Dropout(dropout[1]),
        nn.Linear(hidden, n_classes),
    )


class Classifier(nn.Module):
    def __init__(self, body: nn.Sequential, n_body_features: int, n_classes: int):
        super().__init__()
        self.body = body
        self.pool = ConcatPool()
        self.head = make_head(2 * n_body_features, n_classes)
        self.frozen_groups = 0  # how many leading layer groups get no gradient (freeze_to)

    @property
    def n_classes(self) -> int:
        return self.head[-1].out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the precompute stage caches: pooled body activations, (N, 2 * body channels)."""
        return self.pool(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _body_of(net: nn.Module) -> tuple[nn.Sequential, int]:
    # Everything before global pooling: conv1, bn1, relu, maxpool, layer1..layer4.
    children = [(n, m) for n, m in net.named_children() if n not in ("avgpool", "fc")]
    return nn.Sequential(OrderedDict(children)), net.fc.in_features


def create_model(arch: str, n_classes: int, pretrained: bool = False, stem: str = "imagenet") -> Classifier:
    """A classifier for `n_classes` on torchvision's `arch` body, with ImageNet weights if `pretrained`.

    A failed download of the ImageNet weights is a WeightsError that says what to do instead."""
    import torchvision.models as tvm

    try:
        net = getattr(tvm, arch)(weights="DEFAULT" if pretrained else None)
    except Exception as e:  # noqa: BLE001 - any download failure becomes a clear usage error
        raise WeightsError(
            f"--weights imagenet: could not download the pretrained {arch} weights ({type(e).__name__}: {e}); "
            "use --weights none to train from scratch, or --weights PATH for a local state dict"
        ) from None
    if stem != "imagenet":
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        if stem == "small":
            net.maxpool = nn.Identity()
    body, n_feat = _body_of(net)
    return Classifier(body, n_feat, n_classes)


def load_weights(model: Classifier, state: dict[str, torch.Tensor], source: str, keep_head: bool = False) -> None:
    """Start `model` from a raycat or a plain torchvision state dict (transfer learning).

    The body is loaded; a body that does not fit is a WeightsError naming `source`. A stem of
    another shape (ImageNet weights into a small-stem model) is left freshly initialised: the rest
    of the body still transfers. The head is loaded only with `keep_head`, which the caller sets
    when it knows the source's head was trained on this run's classes in this order: a head of
    the same shape for other classes would start the run with confidently wrong answers.
    """
    if not any(k.startswith("body.") for k in state):
        # A plain torchvision ResNet state dict: its non-fc keys are the body's.
        state = {f"body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape
              and (keep_head or not k.startswith("head."))}
    body_keys = [k for k in own if k.startswith("body.") and not k.startswith("body.conv1.")]
    missing_body = [k for k in body_keys if k not in usable]
    extra_body = [k for k in state if k.startswith("body.") and k not in own]
    if missing_body or extra_body:
        example = (missing_body or extra_body)[0]
        raise WeightsError(f"--weights {source}: does not fit the --arch body ({len(missing_body)} body tensors "
                           f"missing or of another shape, {len(extra_body)} unknown; e.g. {example})")
    if keep_head and not all(k in usable for k in own if k.startswith("head.")):
        raise WeightsError(f"--weights {source}: its head does not fit this run's {model.n_classes} classes")
    model.load_state_dict(usable, strict=False)


def load_exact(model: Classifier, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a trained model's weights for scoring: every tensor, of the same shape, nothing more.
    Scoring with a freshly initialised head or stem would give confident nonsense, so any
    mismatch is a WeightsError naming `source`."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unknown = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unknown or reshaped:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for what, keys in (
            ("missing", missing), ("unknown", unknown), ("of another shape", reshaped)) if keys)
        raise WeightsError(f"{source}: does not fit its model.json ({detail})")
    model.load_state_dict(state, strict=True)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights: what checkpoints and model files hold."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


# ---- layer groups and freezing -----------------------------------------------------------------

N_GROUPS = 3


def layer_groups(model: Classifier) -> list[list[nn.Module]]:
    """[early body, late body, head]; together they hold every parameter exactly once."""
    names = [n for n, _ in model.body.named_children()]
    stages = [n for n in names if n.startswith("layer")]
    cut = names.index(stages[len(stages) // 2])  # first stage of the second half
    children = list(model.body.children())
    return [children[:cut], children[cut:], [model.pool, model.head]]


def group_parameters(model: Classifier) -> list[list[nn.Parameter]]:
    return [[p for m in group for p in m.parameters()] for group in layer_groups(model)]


def freeze_to(model: Classifier, n: int) -> None:
    """Freeze the first `n` layer groups (their parameters get no gradient); train the rest."""
    model.frozen_groups = n
    for i, params in enumerate(group_parameters(model)):
        for p in params:
            p.requires_grad_(i >= n)


def set_train_mode(model: Classifier) -> None:
    """model.train(), but frozen groups stay in eval mode so their BatchNorm statistics don't move."""
    model.train()
    for group in layer_groups(model)[: model.frozen_groups]:
        for m in group:
            m.eval()


def make_optimizer(model: Classifier, lrs: list[float], momentum: float = 0.9, weight_decay: float = 1e-4,
                   nesterov: bool = False) -> torch.optim.SGD:
    """SGD with one parameter group per layer group, each with its own rate."""
    groups = [{"params": ps, "lr": lr} for ps, lr in zip(group_parameters(model), lrs, strict=True)]
    return torch.optim.SGD(groups, lr=lrs[-1], momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)
