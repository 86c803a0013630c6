"""`--cache auto`: each worker keeps its decoded shard only when it fits the memory Ray gives it."""

from raycat.train_job import WORKER_HEADROOM, cache_bytes, cache_fits

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
