"""Teacher errors: each one a single line naming what is wrong and where."""

from __future__ import annotations

from factory.errors import StillhouseError


class TeacherError(StillhouseError):
    """A teacher cannot be built or reached (bad config, environment or server)."""


class MissingApiKeyError(TeacherError):
    """The environment variable that should hold the API key is unset or empty."""


class ServerUnreachableError(TeacherError):
    """No connection could be made to the configured server."""


class UnknownModelError(TeacherError):
    """The server answered that it does not serve the configured model."""


class ModelNotFoundError(TeacherError):
    """A local model directory or file does not exist or is incomplete."""


class RetryableError(Exception):
    """Raised by a backend for a failure worth retrying (429, 5xx, timeout, bad body).

    Not a StillhouseError: it never leaves the machinery; a request that exhausts its
    retries comes back as a Generation with `error` set.
    """

    def __init__(
        self, message: str, retry_after: float | None = None, maybe_billed: bool = False, congestion: bool = False
    ):
        super().__init__(message)
        self.retry_after = retry_after
        # True when the server is pushing back (429, 503, timeouts): `concurrency: auto`
        # then sends fewer requests at once.
        self.congestion = congestion
        # True when the server may have done the work (timeout, cut-off body): the
        # budget then counts the request's worst case.
        self.maybe_billed = maybe_billed


class RequestRejectedError(Exception):
    """Raised by a backend when the server refuses one request for good (e.g. 400: the
    prompt is too long). The request fails at once, without retries; others go on."""
