"""A trained model on storage: `model/weights.pt` (a plain state dict) and `model/model.json` (its
card: what the weights are and how to feed them). The one home for writing, reading, validating
and loading both; `model/model.pt2` is built by model_export.py, and the `--weights` a run starts
from is weights.py's.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass

from raycat import __version__
from raycat.edge import storage
from raycat.edge.model_export import EXPORTED, EXPORTED_USAGE, exported_program
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
    exported: dict | None = None  # how to call model.pt2 (EXPORTED_USAGE), when there is one
    weights_from: str = ""  # what the training run started from (weights.starting_model)

    @classmethod
    def parse(cls, data: dict, where: str) -> "ModelCard":
        """A card from model.json's contents, validated; errors name `where`."""
        from raycat.config import AUG_PRESETS
        from raycat.core import bodies
        from raycat.core.augment import IMAGENET_MEAN, IMAGENET_STD
        from raycat.edge.layout import unsafe_class_names

        try:
            card = cls(arch=data["arch"], classes=list(data["classes"]), size=int(data["size"]),
                       mean=[float(v) for v in data.get("mean", IMAGENET_MEAN)],
                       std=[float(v) for v in data.get("std", IMAGENET_STD)],
                       stem=data.get("stem", "imagenet"), aug=data.get("aug", "side_on"),
                       max_zoom=float(data.get("max_zoom", 1.1)), raycat_version=str(data.get("raycat_version", "")),
                       exported=data.get("exported"), weights_from=str(data.get("weights_from", "")))
            bad = unsafe_class_names(data["classes"])
            if bad:
                raise ValueError(f"classes must be distinct folder names, not {', '.join(bad)}")
            if not 8 <= card.size <= 4096:
                raise ValueError(f"size {card.size} is not an image side in pixels (8-4096)")
            for name, value, choices in (("stem", card.stem, bodies.STEMS), ("aug", card.aug, AUG_PRESETS)):
                if value not in choices:
                    raise ValueError(f"{name} {value!r} is not one of {', '.join(choices)}")
            bodies.info(card.arch)  # a body raycat can build (UnknownArch, a ValueError, names close ones)
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


def write(out: str, state_dict: dict, card: ModelCard, export: bool = True) -> str:
    """OUT/model/weights.pt, OUT/model/model.json (its card) and OUT/model/model.pt2 (the model as a
    program that needs torch only). Returns why the export failed, or "".

    The weights go first: model.json is what marks a folder as a raycat model, so a crash before it
    leaves a folder that is not mistaken for a complete model. The card is written before the
    export is tried, and again with `exported` once model.pt2 is whole: an export that raises
    (torch.export meets an operator it can't trace, say) must never cost a trained model.
    """
    import dataclasses

    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    storage.write_bytes(storage.join(out, "model", WEIGHTS), buf.getvalue())
    card_uri = storage.join(out, "model", CARD)

    def write_card(exported: dict | None) -> None:
        storage.write_text(card_uri, json.dumps(dataclasses.replace(card, exported=exported).to_json(), indent=2,
                                                sort_keys=True) + "\n")

    write_card(None)
    storage.delete_tree(storage.join(out, "model", EXPORTED))  # an earlier run's program is not this model
    if not export:
        return ""
    try:
        program = exported_program(state_dict, card)
    except Exception as e:  # noqa: BLE001 - whatever torch.export raises, the weights and card stay
        first_line = (str(e).splitlines() or [""])[0][:200]
        return f"model.pt2 not written: torch.export failed ({type(e).__name__}: {first_line})"
    storage.write_bytes(storage.join(out, "model", EXPORTED), program)
    write_card(EXPORTED_USAGE)
    return ""


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
    """The trained classifier a model/ folder holds, on the CPU, in eval mode. Strict: weights that
    do not fit the card (another head, stem or arch) are a ModelError naming the file."""
    from raycat.core.model import WeightsError, create_model, load_exact

    model = create_model(card.arch, len(card.classes), stem=card.stem)
    uri = storage.join(folder, WEIGHTS)
    try:
        load_exact(model, read_state_dict(uri, "MODEL"), f"MODEL {uri}")
    except WeightsError as e:
        raise ModelError(str(e)) from None
    return model.eval()
