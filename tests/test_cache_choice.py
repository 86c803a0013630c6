"""`--cache auto`: each worker keeps its decoded shard only when it fits the memory Ray gives it."""

from raycat.shell.train_job import WORKER_HEADROOM, cache_bytes, cache_fits

GIB = 1024**3


def test_auto_keeps_a_shard_that_fits_and_streams_one_that_does_not():
    # 60,000 images at 28 px on one worker: 141 MB of uint8 pixels, far under 4 GiB.
    assert cache_bytes(60000, 28, 1) == 60000 * 3 * 28 * 28
    assert cache_fits("auto", 60000, 28, 1, 4 * GIB)
    # A million images at 224 px: 150 GB a worker on one, 75 GB on two: streamed.
    assert not cache_fits("auto", 1_000_000, 224, 1, 64 * GIB)
    assert not cache_fits("auto", 1_000_000, 224, 2, 64 * GIB)
    # The boundary: the shard plus what training itself needs.
    need = cache_bytes(10000, 64, 2)
    assert cache_fits("auto", 10000, 64, 2, need + WORKER_HEADROOM)
    assert not cache_fits("auto", 10000, 64, 2, need + WORKER_HEADROOM - 1)


def test_the_flag_forces_either_mode():
    assert cache_fits("memory", 1_000_000, 224, 1, 1)
    assert not cache_fits("stream", 10, 28, 1, 64 * GIB)


def test_a_worker_reserves_its_activations_and_everyone_s_train_ones_below_the_gather_limit():
    from raycat.core.loop import GATHER_FEATURES_BYTES
    from raycat.shell.train_job import activations_bytes

    # 2,000 train and 2,317 valid photos, 1,280 features (Lite0), two workers: its half of all, plus
    # every worker's train activations (gathered for the precompute stage).
    assert activations_bytes(2000, 2317, 1280, 2) == 2159 * 1280 * 4 + 2000 * 1280 * 4
    # Above the gather limit a worker keeps its own only.
    n = GATHER_FEATURES_BYTES // (2048 * 4) + 1
    assert activations_bytes(n, 0, 2048, 4) == -(-n // 4) * 2048 * 4
