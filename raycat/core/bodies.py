"""Bodies: the ImageNet-style feature extractors a classifier is built on, as data and functions.

A body is known by its `--arch` name. What this module knows of each:

- where it comes from: torchvision's ResNets (the names below, as raycat always took them), or
  timm's zoo (any other name timm knows: `tf_efficientnet_lite0`, `convnext_tiny`, `resnet50d`...);
- what input it expects: the per-channel mean and std of its pretraining (timm's `pretrained_cfg`;
  ImageNet's for torchvision's), so train, predict, TTA and the export feed it what it learnt on;
- how it is cut into fast.ai's layer groups: early body and late body (the head is the third).
  torchvision's ResNets are cut between their residual stages, halved; a timm body is cut by the
  block groups its own `group_matcher` names, halved the same way (the stem goes with the first
  half; the last conv and norm that belong to the body, such as EfficientNet's conv_head and bn2,
  with the second), over the parameters its `forward_features` uses.

Only CNN bodies whose `forward_features` gives (N, C, H, W) are taken (concat pooling and fast.ai's
head sit on that); a ViT's tokens or a Swin's NHWC map are refused by name. Where a body's ImageNet
weights are found (an installed package, a hub, a file) is the edge's business (raycat/edge/weights.py).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn

from raycat.core.augment import IMAGENET_MEAN, IMAGENET_STD
from raycat.core.errors import BadInput
from raycat.core.names import STEMS, TORCHVISION_ARCHS  # noqa: F401 - (bodies.STEMS: what build() takes)


class UnknownArch(BadInput):
    """--arch names no body raycat can build (exit 2); the message names close ones."""


@dataclass(frozen=True)
class BodyInfo:
    arch: str
    family: str  # torchvision | timm
    mean: tuple[float, float, float]  # per channel, on [0, 1] pixels: what the pretraining normalised by
    std: tuple[float, float, float]
    size: int  # the side it was pretrained at
    interpolation: str  # how its pretraining resized (raycat decodes with antialiased bilinear)


def _timm():
    import timm

    return timm


def timm_network(arch: str, pretrained: bool = False) -> nn.Module:
    """timm's whole network `arch` (its classifier too): the names and shapes a weight file of it
    holds. `pretrained` asks timm for its ImageNet weights (its hub download: raycat/edge/weights.py
    decides when)."""
    return _timm().create_model(arch, pretrained=pretrained)


@lru_cache(maxsize=None)
def info(arch: str) -> BodyInfo:
    """What raycat knows of `arch` without building it; UnknownArch for a name no library knows."""
    if arch in TORCHVISION_ARCHS:
        return BodyInfo(arch, "torchvision", IMAGENET_MEAN, IMAGENET_STD, 224, "bilinear")
    timm = _timm()
    if not timm.is_model(arch):
        raise UnknownArch(f"--arch {arch}: not a torchvision ResNet ({', '.join(TORCHVISION_ARCHS)}) nor a timm model"
                          f"{_close(arch)}")
    cfg = timm.models.get_pretrained_cfg(arch)  # (its default tag's, for a name without one)
    mean = tuple(float(v) for v in (cfg.mean if cfg is not None else IMAGENET_MEAN))
    std = tuple(float(v) for v in (cfg.std if cfg is not None else IMAGENET_STD))
    size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    return BodyInfo(arch, "timm", mean, std, size, (cfg.interpolation if cfg is not None else "") or "bicubic")


def _close(arch: str) -> str:
    import difflib

    names = [*TORCHVISION_ARCHS, *_timm().list_models()]
    want = arch.lower().replace("-", "_")
    close = difflib.get_close_matches(want, names, n=5, cutoff=0.6)
    close += [n for n in _timm().list_models(want + "*")[:5] if n not in close]  # a prefix: vit_tiny
    return f"; close names: {', '.join(close[:6])}" if close else ""


# ---- torchvision's ResNets ---------------------------------------------------------------------

class ResNetBody(nn.Sequential):
    """torchvision ResNet without its pooling and classifier: conv1, bn1, relu, maxpool, layer1..N."""

    def __init__(self, net: nn.Module, fresh_stem: bool = False):
        super().__init__(OrderedDict((n, m) for n, m in net.named_children() if n not in ("avgpool", "fc")))
        self.n_features = net.fc.in_features
        self.fresh_stem = fresh_stem

    def fresh_norms(self) -> list[nn.Module]:
        """BatchNorms that follow a freshly initialised layer (a small stem's conv): their ImageNet
        statistics describe another layer's outputs, so they learn their own whatever bn_freeze says."""
        return [self.bn1] if self.fresh_stem else []

    def from_plain(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A plain torchvision ResNet state dict's body tensors (its fc is a classifier's)."""
        return {k: v for k, v in state.items() if not k.startswith("fc.")}

    def split(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(early, late): the stem and the first half of the residual stages, then the rest."""
        names = [n for n, _ in self.named_children()]
        stages = [n for n in names if n.startswith("layer")]
        cut = names.index(stages[len(stages) // 2])
        children = list(self.children())
        return ([p for m in children[:cut] for p in m.parameters()],
                [p for m in children[cut:] for p in m.parameters()])


def _resnet(arch: str, stem: str) -> ResNetBody:
    import torchvision.models as tvm

    net = getattr(tvm, arch)(weights=None)
    if stem != "imagenet":
        # (for images of 64 px or less: a 3x3 stride-1 stem, with or without the max-pool)
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        if stem == "small":
            net.maxpool = nn.Identity()
    return ResNetBody(net, fresh_stem=stem != "imagenet")


# ---- timm's zoo --------------------------------------------------------------------------------

class TimmBody(nn.Module):
    """A timm CNN's `forward_features`: (N, C, H, W) with C == n_features. Holds exactly the
    parameters forward_features uses (what it never uses, such as ConvNeXt's head norm, is
    dropped), each in one of split()'s two groups."""

    def __init__(self, arch: str):
        super().__init__()
        used = _used_parameters(arch)
        self.net = _timm().create_model(arch, pretrained=False, num_classes=0)
        # A plain state dict of the whole timm model holds these besides the body: its classifier,
        # and what forward_features never uses.
        self._not_body = [self.net.pretrained_cfg.get("classifier") or "classifier"]
        for owner in sorted({n.rsplit(".", 1)[0] for n, _ in self.net.named_parameters() if n not in used}, key=len):
            try:
                mod = self.net.get_submodule(owner)
            except AttributeError:  # its parent went already
                continue
            if all(f"{owner}.{n}" not in used for n, _ in mod.named_parameters()):
                self.net.set_submodule(owner, nn.Identity())
                self._not_body.append(owner)
        left = [n for n, _ in self.net.named_parameters() if n not in used]
        if left:
            raise UnknownArch(f"--arch {arch}: parameters outside forward_features raycat can't set apart "
                              f"({', '.join(left[:3])})")
        self.n_features = int(self.net.num_features)
        self._early = frozenset(_early_names(self.net, [n for n, _ in self.net.named_parameters()]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def from_plain(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A plain timm state dict's body tensors, under this module's names (`net.`)."""
        return {f"net.{k}": v for k, v in state.items()
                if not any(k == m or k.startswith(m + ".") for m in self._not_body)}

    def split(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        named = list(self.net.named_parameters())
        return [p for n, p in named if n in self._early], [p for n, p in named if n not in self._early]


@lru_cache(maxsize=None)
def _used_parameters(arch: str) -> frozenset[str]:
    """The parameter names `forward_features` uses, found by one forward and backward on the meta
    device (no memory, no arithmetic); UnknownArch for a body that is not a CNN with NCHW output."""
    with torch.device("meta"):
        net = _timm().create_model(arch, pretrained=False)
    side = int(net.pretrained_cfg.get("input_size", (3, 224, 224))[-1])  # (a ViT checks its input's size)
    try:
        out = net.forward_features(torch.zeros(1, 3, side, side, device="meta"))
    except Exception as e:  # noqa: BLE001 - whatever the model raises on meta, it is no body for raycat
        raise UnknownArch(f"--arch {arch}: its forward_features could not be traced ({type(e).__name__})") from None
    if out.ndim != 4 or out.shape[1] != net.num_features:
        raise UnknownArch(f"--arch {arch}: not a CNN body: its forward_features gives {tuple(out.shape)}, not "
                          f"(N, {net.num_features}, H, W) (a ViT's tokens or an NHWC map); concat pooling and "
                          "fast.ai's head need a feature map")
    out.float().sum().backward()
    return frozenset(n for n, p in net.named_parameters() if p.grad is not None)


def _early_names(net: nn.Module, names: list[str]) -> list[str]:
    """The early group by timm's own coarse block groups: the stem and the first half of the block
    groups (as ResNets are cut between stages); the rest, with any tail no pattern names (a
    final conv or norm of the body), is the late group."""
    from timm.models._manipulate import group_with_matcher

    matcher = net.group_matcher(coarse=True)
    gid = group_with_matcher(((n, None) for n in names), matcher, reverse=True)
    patterns = [s for v in matcher.values() if v is not None
                for s in ([x[0] for x in v] if isinstance(v, (list, tuple)) else [v])]
    matched = {n for n in names if any(re.match(s, n) for s in patterns)}
    stem = {gid[n] for n in names if re.match(matcher["stem"], n)} if "stem" in matcher else set()
    blocks = sorted({gid[n] for n in matched} - stem)
    if not blocks:
        return []
    cut = blocks[len(blocks) // 2]
    return [n for n in names if gid[n] < cut]


# ---- building --------------------------------------------------------------------------------

def build(arch: str, stem: str = "imagenet") -> nn.Module:
    """The body `arch` names, freshly initialised (weights come from the edge: raycat/edge/weights.py),
    with `n_features` and `split()`. A stem other than ImageNet's is for torchvision's ResNets."""
    family = info(arch).family
    if stem != "imagenet" and family != "torchvision":
        raise UnknownArch(f"--stem {stem}: for torchvision's ResNets ({', '.join(TORCHVISION_ARCHS)}); "
                          f"{arch} keeps its own")
    return _resnet(arch, stem) if family == "torchvision" else TimmBody(arch)
