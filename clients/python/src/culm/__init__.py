"""culm's Python client: enqueue jobs, wait for their results, and (with the `django`
extra) enqueue from inside a database transaction through culm's outbox."""

from . import errors
from ._client import AsyncClient, Client, new_idempotency_key
from .errors import CulmError, JobTimeoutError, TransportError
from .types import FINAL_STATES, Batch, BatchCallback, DeadJob, EnqueueSpec, Job, JobRef, JobType, Queue

__all__ = [
    "FINAL_STATES",
    "AsyncClient",
    "Batch",
    "BatchCallback",
    "Client",
    "CulmError",
    "DeadJob",
    "EnqueueSpec",
    "Job",
    "JobRef",
    "JobTimeoutError",
    "JobType",
    "Queue",
    "TransportError",
    "errors",
    "new_idempotency_key",
]
