"""Shared fixtures. Each fixture family lives in its own module under tests/fixtures/ and is
imported here so that every test module can use it."""

from tests.fixtures.mlflow_server import mlflow_server  # noqa: F401
from tests.fixtures.ray_runtime import ray_runtime  # noqa: F401
from tests.fixtures.s3_server import s3_server  # noqa: F401
from tests.fixtures.torch_threads import one_torch_thread  # noqa: F401
