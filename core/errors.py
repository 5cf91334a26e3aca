"""Domain errors. Core raises these; the edges (CLI, HTTP) translate them.

Each error carries an HTTP status so the service can map it without a lookup table,
and a message that names the problem for a person (never a traceback or a file path
that the client did not send).
"""

from __future__ import annotations


class RagtuneError(Exception):
    """Base of every error ragtune raises on purpose."""

    status: int = 500
    title: str = "Internal error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(RagtuneError):
    """The caller sent something ragtune cannot use (bad value, bad file, bad name)."""

    status = 400
    title = "Invalid input"


class DataError(InvalidInput):
    """A data file could not be used as a whole (empty, every line invalid, ...)."""

    title = "Invalid data"


class FilterMismatch(InvalidInput):
    """A well-formed metadata filter that this index cannot answer: a field none of its
    chunks has, or a range over values of another kind (a state of the index, like an
    embedder mismatch: the same filter works on an index that has the field)."""

    status = 409
    title = "Filter does not fit the index"


class NotFound(RagtuneError):
    status = 404
    title = "Not found"


class IndexNotFound(NotFound):
    title = "Index not found"


class UnknownAdapter(NotFound):
    title = "Unknown adapter"


class ModelNotFound(NotFound):
    title = "Model not found"


class IndexMismatch(RagtuneError):
    """The index was built with another embedding model or dimension."""

    status = 409
    title = "Index does not match the embedder"


class AdapterMismatch(RagtuneError):
    """The adapter was trained on another base model."""

    status = 409
    title = "Adapter does not match the base model"


class ManifestError(RagtuneError):
    """An index or adapter manifest.json cannot be used: missing, not JSON, a schema version
    this ragtune does not know, or wrong or missing fields. The message names the file."""

    title = "Unreadable manifest"

    def __init__(self, message: str, *, path: str = "", problem: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.problem = problem


class AdapterBusy(RagtuneError):
    """The adapter is generating for running requests, so it cannot be unloaded now."""

    status = 409
    title = "Adapter in use"


class Overloaded(RagtuneError):
    """The request queue is full; the client should retry later."""

    status = 503
    title = "Service overloaded"


class RequestTimeout(RagtuneError):
    status = 504
    title = "Generation timed out"


class BackendError(RagtuneError):
    """The generation server answered with an error (or refused an adapter); the message
    carries its own words."""

    status = 502
    title = "Generation backend error"


class BackendUnavailable(RagtuneError):
    """The generation server cannot be reached, or says it is overloaded; retry later."""

    status = 503
    title = "Generation backend unavailable"
    retry_after = 2


class BackendTimeout(RagtuneError):
    """The generation server sent nothing for ``generator_timeout_s``."""

    status = 504
    title = "Generation backend timed out"


class PeerLost(RagtuneError):
    """A process of a multi-process training run lost contact with another one, which
    stopped or was killed (that process's own error, or the launcher's, says why)."""

    title = "Training process lost"


class InsufficientResources(RagtuneError):
    """Not enough disk (or memory) to do the job safely."""

    status = 507
    title = "Insufficient storage"


class IndexFormatOutdated(ManifestError):
    """The index was written in an older on-disk format; an update run converts it."""

    status = 409
    title = "Index format outdated"
