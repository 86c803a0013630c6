"""One line a user can act on, from whatever wrapped the failure."""

from raycat.edge.storage import StorageError
from raycat.errors import describe_failure


def wrapped(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise RuntimeError("a framework's wrapper") from e
    except RuntimeError as outer:
        return outer


def test_the_innermost_foreign_error_is_shown():
    assert describe_failure(wrapped(ValueError("bad pixel\nat row 3"))) == "ValueError: at row 3"


def test_raycat_errors_are_shown_as_raised_not_their_causes():
    try:
        try:
            raise OSError("curlCode: 7, could not connect")
        except OSError as e:
            raise StorageError("write s3://b/out/metrics.json: curlCode: 7, could not connect") from e
    except StorageError as e:
        err = e
    assert describe_failure(wrapped(err)) == \
        "StorageError: write s3://b/out/metrics.json: curlCode: 7, could not connect"


def test_a_raycat_error_keeps_its_first_line_when_ray_appends_advice():
    err = StorageError("write s3://b/o/part-1.parquet: NETWORK_CONNECTION\nTo change retry attempts, configure ...")
    assert describe_failure(wrapped(err)) == "StorageError: write s3://b/o/part-1.parquet: NETWORK_CONNECTION"
