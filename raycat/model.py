"""The classifier: a torchvision ResNet body, concat pooling and fast.ai's head, in 3 layer groups.

Layer groups are cut by a rule, not by indices: the body's residual stages (`layer1..layerN`) are
split in half, so group 0 is the stem plus the first half of the stages, group 1 the second half,
and group 2 the head. That holds for every supported architecture.
"""

from __future__ import annotations

import io
from collections import OrderedDict

import torch
import torch.nn as nn

from raycat.config import ARCHS
from raycat.errors import BadInput


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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the precompute stage caches: pooled body activations, (N, 2 * body channels)."""
        return self.pool(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _torchvision_model(arch: str, pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    if arch not in ARCHS:
        raise WeightsError(f"--arch: unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    weights = "DEFAULT" if pretrained else None
    return getattr(tvm, arch)(weights=weights)


def _body_of(net: nn.Module) -> tuple[nn.Sequential, int]:
    # Everything before global pooling: conv1, bn1, relu, maxpool, layer1..layer4.
    children = [(n, m) for n, m in net.named_children() if n not in ("avgpool", "fc")]
    return nn.Sequential(OrderedDict(children)), net.fc.in_features


def create_model(arch: str, n_classes: int, weights: str = "none") -> Classifier:
    """A classifier for `n_classes`; `weights` is imagenet | none | path/URI (see load_weights)."""
    pretrained = weights == "imagenet"
    try:
        net = _torchvision_model(arch, pretrained)
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - any download failure becomes a clear usage error
        raise WeightsError(
            f"--weights imagenet: could not download the pretrained {arch} weights ({type(e).__name__}: {e}); "
            "use --weights none to train from scratch, or --weights PATH for a local state dict"
        ) from None
    body, n_feat = _body_of(net)
    model = Classifier(body, n_feat, n_classes)
    if weights not in ("imagenet", "none"):
        load_weights(model, weights)
    return model


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """A state dict from a file or a raycat model/ folder (local or s3://), never running pickled code."""
    from raycat import storage

    candidates = [uri]
    if storage.is_dir(uri):
        candidates = [storage.join(uri, "weights.pt"), storage.join(uri, "model", "weights.pt")]
    for c in candidates:
        if storage.exists(c) and not storage.is_dir(c):
            data = storage.read_bytes(c)
            try:
                sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - unpickling refused or corrupt: a usage error
                raise WeightsError(f"--weights {c}: not a loadable state dict ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:200]})") from None
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise WeightsError(f"--weights {c}: not a state dict (a mapping of names to tensors)")
            return sd
    raise WeightsError(f"--weights {uri}: no such file, and no weights.pt in it")


def load_weights(model: Classifier, uri: str) -> None:
    """Load a raycat or a plain torchvision state dict; a head of another shape is replaced, not an error."""
    sd = read_state_dict(uri)
    if not any(k.startswith("body.") for k in sd):
        # A plain torchvision ResNet state dict: its non-fc keys are the body's.
        sd = {f"body.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    own = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    body_keys = [k for k in own if k.startswith("body.")]
    missing_body = [k for k in body_keys if k not in usable]
    extra_body = [k for k in sd if k.startswith("body.") and k not in own]
    if missing_body or extra_body:
        example = (missing_body or extra_body)[0]
        raise WeightsError(f"--weights {uri}: does not fit the --arch body ({len(missing_body)} body tensors "
                           f"missing or of another shape, {len(extra_body)} unknown; e.g. {example})")
    model.load_state_dict(usable, strict=False)


# ---- layer groups and freezing -----------------------------------------------------------------

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


def freeze(model: Classifier) -> None:
    freeze_to(model, len(layer_groups(model)) - 1)


def unfreeze(model: Classifier) -> None:
    freeze_to(model, 0)


def set_train_mode(model: Classifier) -> None:
    """model.train(), but frozen groups stay in eval mode so their BatchNorm statistics don't move."""
    model.train()
    for group in layer_groups(model)[: getattr(model, "frozen_groups", 0)]:
        for m in group:
            m.eval()


def differential_lrs(lr: float, lr_mult: float, n_groups: int = 3) -> list[float]:
    """[lr / m^(n-1), ..., lr / m, lr]: earlier groups learn more slowly."""
    return [lr / lr_mult ** (n_groups - 1 - i) for i in range(n_groups)]


def make_optimizer(model: Classifier, lrs: list[float], momentum: float = 0.9, weight_decay: float = 1e-4):
    """SGD with one parameter group per layer group, each with its own rate."""
    groups = [{"params": ps, "lr": lr} for ps, lr in zip(group_parameters(model), lrs, strict=True)]
    return torch.optim.SGD(groups, lr=lrs[-1], momentum=momentum, weight_decay=weight_decay)
