"""The one exception hierarchy of Exemplar; app/ maps each class to an HTTP status once."""

ID_IN_MESSAGE_CHARS = 80
"""Ids and names a caller sent are quoted in messages up to this many characters (`quoted`)."""


def quoted(value: str, limit: int = ID_IN_MESSAGE_CHARS) -> str:
    """`value` quoted for an error message, cut to `limit` characters (with its full length said),
    so a huge id sent by a caller is not echoed back in full."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


class ExemplarError(Exception):
    """Base class of every error the core raises on purpose."""


class InvalidInputError(ExemplarError):
    """The caller sent something unusable; the message says what to fix."""


class NotFoundError(ExemplarError):
    """A requested object (example, index, job) does not exist."""


class IndexIncompatibleError(ExemplarError):
    """An index does not match the model, projection or data it is used with."""


class CapacityError(ExemplarError):
    """A request exceeds a configured limit."""


class CostLimitError(CapacityError):
    """A request's estimated cost (`exemplar.cost`) is above the server's limit per request; it is
    refused before any work, with the estimate and the limit in seconds."""

    def __init__(self, message: str, *, estimate_s: float, limit_s: float) -> None:
        super().__init__(message)
        self.estimate_s = estimate_s
        self.limit_s = limit_s


class AuthenticationError(ExemplarError):
    """Missing or wrong credentials for a protected operation."""


class UnavailableError(ExemplarError):
    """A backing service the operation needs (e.g. Redis for batch jobs) is not configured or not reachable."""


class DeadlineExceededError(UnavailableError):
    """A request ran past its deadline and was stopped at its next step; ``retry_after`` (s) says when
    the service may have room again."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(ExemplarError):
    """Too many requests or jobs for a client right now; ``retry_after`` says when to come back."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
