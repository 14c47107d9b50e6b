"""The one error type users see: its message is printed as a single line by the CLI."""


class CompatretError(Exception):
    """Bad input or an impossible request, explained in one line."""


class Unavailable(CompatretError):
    """A part that must answer did not (a shard past its deadline): the request may be retried;
    an answer without that part would be silently partial, so none is given (HTTP 503)."""
