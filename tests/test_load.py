"""Load: `raycat predict` over 20,000 small images (bench/predict_load.py's data and checks) with a
bounded driver, every image accounted for."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import predict_load  # noqa: E402

from raycat import outputs  # noqa: E402
from raycat.model import create_model  # noqa: E402


@pytest.mark.integration
def test_predict_over_20000_images_with_a_bounded_driver_and_none_lost(ray_local, tmp_path):
    torch.manual_seed(0)
    model = str(tmp_path / "m")
    outputs.write_model(model, create_model("resnet18", 4, "none").state_dict(), "resnet18", predict_load.CLASSES,
                        32)
    good, bad = predict_load.make_images(str(tmp_path / "images"), 20000)
    assert (good, bad) == (19800, 200)
    # A driver of its own (so its peak RSS is its own), on this session's Ray.
    r = predict_load.run(model, str(tmp_path / "images"), str(tmp_path / "out"), 2,
                         address=ray_local.get_runtime_context().gcs_address)
    predict_load.check(r, 20000)  # predicted + skipped = total; each path once; none both
    assert r["skipped"] == bad
    # Bounded: Ray's and torch's own footprint (about 0.9 GB here at 2,000 and at 20,000 images).
    assert r["peak_mb"] is not None and r["peak_mb"] < 1600, r
