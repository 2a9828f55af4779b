"""Fixtures of the preprocessing tests: the synthetic corpus, encoded once per session."""

from tests.fixtures.media import media_set  # noqa: F401
