"""The classifier: a body (core/bodies.py: torchvision's ResNets or timm's CNNs), concat pooling and
fast.ai's head, in 3 layer groups: early body, late body, head. Each body says where it is cut;
the head is the third group. The classifier carries the normalisation its body expects.

The `small` stem (a 3x3 stride-1 convolution and no max-pool) is for ResNets on images of 64 px or
less: ImageNet's stem (a 7x7 stride-2 convolution, then a max-pool) divides the side by 4 before the
first residual stage, which leaves a 7x7 map from a 28 px garment. `small_pool` keeps the max-pool:
a quarter of `small`'s compute for a 14x14 map at the first stage.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from raycat.core import bodies
from raycat.core.errors import BadInput

STEMS = bodies.STEMS


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
    def __init__(self, body: nn.Module, n_classes: int, mean: tuple = bodies.IMAGENET_MEAN,
                 std: tuple = bodies.IMAGENET_STD):
        super().__init__()
        self.body = body
        self.pool = ConcatPool()
        self.head = make_head(2 * body.n_features, n_classes)
        self.frozen_groups = 0  # how many leading layer groups get no gradient (freeze_to)
        # What the body expects of its input (per channel, on [0, 1] pixels): its pretraining's.
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def n_classes(self) -> int:
        return self.head[-1].out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the precompute stage caches: pooled body activations, (N, 2 * body channels)."""
        return self.pool(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def create_model(arch: str, n_classes: int, stem: str = "imagenet") -> Classifier:
    """A classifier for `n_classes` on the body `arch` names (core/bodies.py), freshly initialised:
    ImageNet's or a file's weights are loaded into it by the caller (raycat/edge/weights.py,
    load_weights)."""
    info = bodies.info(arch)
    return Classifier(bodies.build(arch, stem), n_classes, info.mean, info.std)


def load_weights(model: Classifier, state: dict[str, torch.Tensor], source: str, keep_head: bool = False) -> None:
    """Start `model` from a raycat state dict, or a plain torchvision or timm one of its body's
    network (transfer learning).

    The body is loaded; a body that does not fit is a WeightsError naming `source`. A stem of
    another shape (ImageNet weights into a small-stem model) is left freshly initialised: the rest
    of the body still transfers. The head is loaded only with `keep_head`, which the caller sets
    when it knows the source's head was trained on this run's classes in this order: a head of
    the same shape for other classes would start the run with confidently wrong answers.
    """
    if not any(k.startswith("body.") for k in state):
        # A plain torchvision or timm state dict of the whole network: its body's tensors.
        state = {f"body.{k}": v for k, v in model.body.from_plain(state).items()}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape
              and (keep_head or not k.startswith("head."))}
    # (BatchNorm's num_batches_tracked is a counter, not a weight: a file without it still fits)
    body_keys = [k for k in own if k.startswith("body.") and not k.startswith("body.conv1.")
                 and not k.endswith("num_batches_tracked")]
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


def group_parameters(model: Classifier) -> list[list[nn.Parameter]]:
    """[early body, late body, head]: together they hold every parameter exactly once (the body
    says where it is cut: core/bodies.py)."""
    early, late = model.body.split()
    return [early, late, [*model.pool.parameters(), *model.head.parameters()]]


def freeze_to(model: Classifier, n: int) -> None:
    """Freeze the first `n` layer groups (their parameters get no gradient); train the rest."""
    model.frozen_groups = n
    for i, params in enumerate(group_parameters(model)):
        for p in params:
            p.requires_grad_(i >= n)


def set_train_mode(model: Classifier, bn_freeze: bool = False) -> None:
    """model.train(), but a BatchNorm whose parameters are all frozen stays in eval mode: its
    statistics don't move while its group is frozen (whichever body, however it is cut). With
    `bn_freeze` (the 2017 course's `learn.bn_freeze(True)`) every BatchNorm of the body keeps its
    statistics, frozen or not; their scales and shifts still train. A BatchNorm right after a
    freshly initialised layer (bodies' `fresh_norms`) is not kept: ImageNet's statistics of
    another layer would normalise its inputs for the whole run."""
    model.train()
    kept = {id(m) for m in model.body.modules()} if bn_freeze else set()
    # (a BatchNorm after a fresh layer, such as a small stem's conv, learns its statistics anyway)
    kept -= {id(m) for m in getattr(model.body, "fresh_norms", list)()}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            own = list(m.parameters(recurse=False))
            if id(m) in kept or (own and not any(p.requires_grad for p in own)):
                m.eval()


def make_optimizer(model: Classifier, lrs: list[float], momentum: float = 0.9, weight_decay: float = 1e-4,
                   nesterov: bool = False) -> torch.optim.SGD:
    """SGD with one parameter group per layer group, each with its own rate."""
    groups = [{"params": ps, "lr": lr} for ps, lr in zip(group_parameters(model), lrs, strict=True)]
    # fused: one kernel a tensor for decay, momentum and update (2.6x faster than foreach on the
    # head's 1.3M parameters on a CPU core: a third of a step on precomputed activations went there)
    return torch.optim.SGD(groups, lr=lrs[-1], momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0, fused=True)
