"""`model/model.pt2`: the trained classifier as a program that needs torch only (torch.export), with
the card's normalisation inside: uint8 (N, H, W, 3) RGB in, class probabilities out. model.json
says how to call it (EXPORTED_USAGE)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raycat.edge.model_card import ModelCard

EXPORTED = "model.pt2"
# How to call model.pt2, written into model.json: it needs torch only, not raycat.
EXPORTED_USAGE = {
    "file": EXPORTED,
    "format": "torch.export (torch >= 2.5): ep = torch.export.load(path); model = ep.module()",
    "input": "uint8 tensor (N, H, W, 3), RGB, H = W = size: as PIL and numpy give images; resize the short "
             "side to size and centre-crop first",
    "output": "float32 tensor (N, classes): class probabilities, in the order of `classes`",
    "device": "exported on the CPU; for CUDA: torch.export.passes.move_to_device_pass(ep, 'cuda')",
}


class Standalone:
    """Builds the module model.pt2 holds: uint8 (N, H, W, 3) in, probabilities out, the card's
    normalisation inside, so a caller needs nothing of raycat's."""

    @staticmethod
    def module(model, card: ModelCard):
        import torch

        class Probabilities(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model
                self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(card.std).view(1, 3, 1, 1)))
                self.register_buffer("shift", torch.tensor(card.mean).view(1, 3, 1, 1) / torch.tensor(card.std).view(
                    1, 3, 1, 1))

            def forward(self, x):
                x = x.permute(0, 3, 1, 2).float() * self.scale - self.shift
                return torch.softmax(self.model(x), dim=1)

        return Probabilities().eval()


def exported_program(state_dict: dict, card: ModelCard) -> bytes:
    """model.pt2's bytes: the classifier with its weights, exported by torch.export with a dynamic
    batch dimension."""
    import torch

    from raycat.core.model import create_model

    model = create_model(card.arch, len(card.classes), stem=card.stem)
    model.load_state_dict({k: v.detach().cpu() for k, v in state_dict.items()})
    module = Standalone.module(model.eval(), card)
    example = torch.zeros(2, card.size, card.size, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch}})
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()
