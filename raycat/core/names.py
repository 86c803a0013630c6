"""The names of the bodies and stems the core builds, in plain Python: the face (`raycat/config.py`)
validates `--arch` and `--stem` against them without importing torch; `core/bodies.py` builds them."""

from __future__ import annotations

# torchvision's ResNet family: the bodies raycat always took, and model.json files already name.
# Any other name is looked up in timm's zoo (core/bodies.py).
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "wide_resnet50_2")
STEMS = ("imagenet", "small", "small_pool")
