"""Load: `raycat predict` over 20,000 small images (bench/predict_scale.py's data and checks), from a
Parquet manifest of their paths, with a bounded driver and every image accounted for. (Scoring a
folder is in test_predict_ray.py; bench/predict_scale.py runs both at 20,000 and 200,000.)"""

import predict_scale
import pytest
from results import write_random_model


@pytest.mark.integration
def test_predict_over_20000_images_with_a_bounded_driver_and_none_lost(ray_local, tmp_path):
    model = write_random_model(str(tmp_path / "m"), predict_scale.CLASSES, 32)
    images = str(tmp_path / "images")
    good, bad = predict_scale.make_images(images, 20000)
    assert (good, bad) == (19800, 200)
    manifest = predict_scale.make_manifest(images, 20000, str(tmp_path / "manifest.parquet"))
    address = ray_local.get_runtime_context().gcs_address
    # A driver of its own (so its peak RSS is its own), on this session's Ray.
    r = predict_scale.run(model, manifest, str(tmp_path / "out"), 1, address=address)
    predict_scale.check(r, 20000)  # predicted + skipped = total; each path once; none both
    assert r["skipped"] == bad
    # Bounded: Ray's and torch's own footprint (under 1 GB here at 20,000 and 200,000 images).
    assert r["peak_mb"] is not None and r["peak_mb"] < 1600, r
