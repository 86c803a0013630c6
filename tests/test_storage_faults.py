"""The S3 server goes away: writes retry through a short outage, and a store that stays down fails
the job with a message naming the URI and no partial file under a final name. The outage is real:
a TCP forwarder in front of moto's server resets and refuses connections (tests/tcp_proxy.py)."""

import time

import boto3
import pytest

from raycat.edge import storage


def keys(proxy, bucket, prefix):
    s3 = boto3.client("s3", endpoint_url=proxy.upstream_url)
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_a_write_during_a_short_outage_is_retried_and_lands_whole(s3_outage, bucket):
    uri = f"s3://{bucket}/faults/blink.bin"
    data = bytes(range(256)) * 4096
    s3_outage.down(seconds=3)
    t = time.time()
    storage.write_bytes(uri, data)
    assert time.time() - t > 2  # it really waited the outage out
    assert s3_outage.refused > 0
    assert storage.read_bytes(uri) == data


def test_a_store_that_stays_down_fails_naming_the_uri_and_writes_nothing(s3_outage, bucket, monkeypatch):
    monkeypatch.setattr(storage, "RETRY_DELAYS_S", (0.2, 0.4))  # the same path, a shorter wait
    uri = f"s3://{bucket}/faults/never.bin"
    s3_outage.down()
    with pytest.raises(storage.StorageError, match=f"write {uri}"):
        storage.write_bytes(uri, b"x" * 100_000)
    s3_outage.up()
    assert keys(s3_outage, bucket, "faults/never") == []
