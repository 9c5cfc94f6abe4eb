"""Exceptions, one per error code of culm's admin API (`{"error": {"code", "message", "field"}}`)."""

from __future__ import annotations

from typing import Any


class CulmError(Exception):
    """An error answer of the culm API. `code` is the API's error code; `field` names
    the request field at fault (e.g. `payload.amount_cents`, `queue`, `wait`), if any."""

    code: str = "error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code
        self.field = field

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, field={self.field!r}, message={self.message!r})"


class TransportError(CulmError):
    """The request did not get an answer (connection refused, reset, timed out) after
    the client's retries."""

    code = "transport"


class JobTimeoutError(CulmError, TimeoutError):
    """`wait()` ended before the job reached a final state. Also a builtin `TimeoutError`."""

    code = "timeout"

    def __init__(self, message: str, *, job: Any = None) -> None:
        super().__init__(message)
        self.job = job


# One class per error code the API answers with (worker/src/admin); unknown codes raise CulmError.

class BadBodyError(CulmError):
    """API error `bad_body`."""

    code = "bad_body"


class BatchCompleteError(CulmError):
    """API error `batch_complete`: jobs were added to a batch that is complete."""

    code = "batch_complete"


class BatchNotFoundError(CulmError):
    """API error `batch_not_found`."""

    code = "batch_not_found"


class BatchTooLargeError(CulmError):
    """API error `batch_too_large`."""

    code = "batch_too_large"


class BodyTooLargeError(CulmError):
    """API error `body_too_large`."""

    code = "body_too_large"


class DeadJobNotFoundError(CulmError):
    """API error `dead_job_not_found`."""

    code = "dead_job_not_found"


class DependencyUnavailableError(CulmError):
    """API error `dependency_unavailable`."""

    code = "dependency_unavailable"


class ForbiddenError(CulmError):
    """API error `forbidden`."""

    code = "forbidden"


class InvalidIdempotencyKeyError(CulmError):
    """API error `invalid_idempotency_key`."""

    code = "invalid_idempotency_key"


class InvalidPayloadError(CulmError):
    """API error `invalid_payload`."""

    code = "invalid_payload"


class InvalidQueryError(CulmError):
    """API error `invalid_query`."""

    code = "invalid_query"


class InvalidRequestError(CulmError):
    """API error `invalid_request`."""

    code = "invalid_request"


class JobNotFoundError(CulmError):
    """API error `job_not_found`."""

    code = "job_not_found"


class MalformedJsonError(CulmError):
    """API error `malformed_json`."""

    code = "malformed_json"


class MethodNotAllowedError(CulmError):
    """API error `method_not_allowed`."""

    code = "method_not_allowed"


class NotCancellableError(CulmError):
    """API error `not_cancellable`."""

    code = "not_cancellable"


class QueueNotFoundError(CulmError):
    """API error `queue_not_found`."""

    code = "queue_not_found"


class RouteNotFoundError(CulmError):
    """API error `route_not_found`."""

    code = "route_not_found"


class ScheduleInvalidError(CulmError):
    """API error `schedule_invalid`."""

    code = "schedule_invalid"


class ScheduleNotFoundError(CulmError):
    """API error `schedule_not_found`."""

    code = "schedule_not_found"


class SchedulesUnavailableError(CulmError):
    """API error `schedules_unavailable`."""

    code = "schedules_unavailable"


class StorageUnavailableError(CulmError):
    """API error `storage_unavailable`."""

    code = "storage_unavailable"


class TierNotAllowedError(CulmError):
    """API error `tier_not_allowed`."""

    code = "tier_not_allowed"


class UnauthorizedError(CulmError):
    """API error `unauthorized`."""

    code = "unauthorized"


class UnknownJobError(CulmError):
    """API error `unknown_job`."""

    code = "unknown_job"


class UnknownQueueError(CulmError):
    """API error `unknown_queue`."""

    code = "unknown_queue"


BY_CODE: dict[str, type[CulmError]] = {
    "bad_body": BadBodyError,
    "batch_complete": BatchCompleteError,
    "batch_not_found": BatchNotFoundError,
    "batch_too_large": BatchTooLargeError,
    "body_too_large": BodyTooLargeError,
    "dead_job_not_found": DeadJobNotFoundError,
    "dependency_unavailable": DependencyUnavailableError,
    "forbidden": ForbiddenError,
    "invalid_idempotency_key": InvalidIdempotencyKeyError,
    "invalid_payload": InvalidPayloadError,
    "invalid_query": InvalidQueryError,
    "invalid_request": InvalidRequestError,
    "job_not_found": JobNotFoundError,
    "malformed_json": MalformedJsonError,
    "method_not_allowed": MethodNotAllowedError,
    "not_cancellable": NotCancellableError,
    "queue_not_found": QueueNotFoundError,
    "route_not_found": RouteNotFoundError,
    "schedule_invalid": ScheduleInvalidError,
    "schedule_not_found": ScheduleNotFoundError,
    "schedules_unavailable": SchedulesUnavailableError,
    "storage_unavailable": StorageUnavailableError,
    "tier_not_allowed": TierNotAllowedError,
    "unauthorized": UnauthorizedError,
    "unknown_job": UnknownJobError,
    "unknown_queue": UnknownQueueError,
}


def from_response(status: int, body: Any) -> CulmError:
    """The exception for an error answer."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return CulmError(f"HTTP {status}: {body!r}", status=status, code=f"http_{status}")
    code = str(err.get("code", f"http_{status}"))
    cls = BY_CODE.get(code, CulmError)
    return cls(str(err.get("message", "")), status=status, code=code, field=err.get("field"))
