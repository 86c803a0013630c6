"""A trained model on storage: `model/weights.pt` (a plain state dict) and `model/model.json` (its
card: what the weights are and how to feed them). The one home for writing, reading, validating
and loading both, and for the `--weights` a run starts from.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass

from raycat import __version__, storage
from raycat.errors import BadInput

CARD, WEIGHTS = "model.json", "weights.pt"


class ModelError(BadInput):
    """MODEL or --weights can't be used (exit 2); the message names the file."""


@dataclass(frozen=True)
class ModelCard:
    arch: str
    classes: list[str]
    size: int
    mean: list[float]  # the normalisation the model was trained with, per channel
    std: list[float]
    stem: str = "imagenet"
    # aug and max_zoom travel with the model: predict's TTA views use the training augmentation.
    aug: str = "side_on"
    max_zoom: float = 1.1
    raycat_version: str = __version__

    @classmethod
    def parse(cls, data: dict, where: str) -> "ModelCard":
        """A card from model.json's contents, validated; errors name `where`."""
        from raycat.config import ARCHS, AUG_PRESETS, STEMS
        from raycat.core.augment import IMAGENET_MEAN, IMAGENET_STD
        from raycat.layout import unsafe_class_names

        try:
            card = cls(arch=data["arch"], classes=list(data["classes"]), size=int(data["size"]),
                       mean=[float(v) for v in data.get("mean", IMAGENET_MEAN)],
                       std=[float(v) for v in data.get("std", IMAGENET_STD)],
                       stem=data.get("stem", "imagenet"), aug=data.get("aug", "side_on"),
                       max_zoom=float(data.get("max_zoom", 1.1)), raycat_version=str(data.get("raycat_version", "")))
            bad = unsafe_class_names(data["classes"])
            if bad:
                raise ValueError(f"classes must be distinct folder names, not {', '.join(bad)}")
            if not 8 <= card.size <= 4096:
                raise ValueError(f"size {card.size} is not an image side in pixels (8-4096)")
            for name, value, choices in (("arch", card.arch, ARCHS), ("stem", card.stem, STEMS),
                                         ("aug", card.aug, AUG_PRESETS)):
                if value not in choices:
                    raise ValueError(f"{name} {value!r} is not one of {', '.join(choices)}")
            if len(card.mean) != 3 or len(card.std) != 3 or min(card.std) <= 0:
                raise ValueError("mean and std must be 3 numbers each, std > 0")
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(f"MODEL {where}: not a raycat model card ({type(e).__name__}: {e})") from None
        return card

    def augment_spec(self):
        """The training augmentation, with this model's normalisation: what TTA draws from."""
        from raycat.core.augment import AugmentSpec

        return AugmentSpec(self.aug, self.max_zoom, mean=tuple(self.mean), std=tuple(self.std))

    def to_json(self) -> dict:
        return asdict(self)


def write(out: str, state_dict: dict, card: ModelCard) -> None:
    """OUT/model/weights.pt and OUT/model/model.json.

    The weights go first: model.json is what marks a folder as a raycat model, so a crash between
    the two leaves a folder that is not mistaken for a complete model.
    """
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    storage.write_bytes(storage.join(out, "model", WEIGHTS), buf.getvalue())
    storage.write_text(storage.join(out, "model", CARD), json.dumps(card.to_json(), indent=2, sort_keys=True) + "\n")


def find(model: str) -> tuple[str, ModelCard]:
    """(the model/ folder, its card): MODEL may be the folder or the OUT of `raycat train` holding it."""
    for folder in (model, storage.join(model, "model")):
        card_uri = storage.join(folder, CARD)
        if storage.exists(card_uri) and storage.exists(storage.join(folder, WEIGHTS)):
            try:
                data = json.loads(storage.read_text(card_uri))
            except ValueError as e:
                raise ModelError(f"MODEL {card_uri}: not a raycat model card (not JSON: {e})") from None
            if not isinstance(data, dict):
                raise ModelError(f"MODEL {card_uri}: not a raycat model card (not a JSON object)")
            return folder, ModelCard.parse(data, card_uri)
    raise ModelError(f"MODEL {model}: not a raycat model (no {CARD} and {WEIGHTS} in it or in "
                     f"{storage.join(model, 'model')})")


def read_state_dict(uri: str, flag: str = "--weights") -> dict:
    """A state dict from a file or a raycat model/ folder (local or s3://), never running pickled code."""
    import torch

    candidates = [uri]
    if storage.is_dir(uri):
        candidates = [storage.join(uri, WEIGHTS), storage.join(uri, "model", WEIGHTS)]
    for c in candidates:
        if storage.exists(c) and not storage.is_dir(c):
            try:
                sd = torch.load(io.BytesIO(storage.read_bytes(c)), map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - unpickling refused or corrupt: a usage error
                raise ModelError(f"{flag} {c}: not a loadable state dict ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200]})") from None
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise ModelError(f"{flag} {c}: not a state dict (a mapping of names to tensors)")
            return sd
    raise ModelError(f"{flag} {uri}: no such file, and no {WEIGHTS} in it")


def load(folder: str, card: ModelCard):
    """The trained classifier a model/ folder holds, on the CPU, in eval mode."""
    from raycat.core.model import create_model, load_weights

    model = create_model(card.arch, len(card.classes), stem=card.stem)
    uri = storage.join(folder, WEIGHTS)
    load_weights(model, read_state_dict(uri, "MODEL"), uri)
    return model.eval()


def starting_model(arch: str, weights: str, stem: str, n_classes: int):
    """The model a run starts from: `--weights` imagenet, none, or a state dict or model/ folder."""
    from raycat.core.model import create_model, load_weights

    model = create_model(arch, n_classes, pretrained=weights == "imagenet", stem=stem)
    if weights not in ("imagenet", "none"):
        load_weights(model, read_state_dict(weights), weights)
    return model
