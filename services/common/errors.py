"""Domain errors shared by every service; one interceptor maps them to gRPC status codes."""

from __future__ import annotations

import grpc
from google.protobuf.message import Message


class DiluError(Exception):
    """Base of every error a Dilu service reports to its caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[Message]:
        """Rich error details (`google.rpc.*` messages) for the status; none by default."""
        return []


class InvalidArgument(DiluError):
    """A request field is malformed; `field` is its path, e.g. `function.resources.sm_limit`."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(DiluError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DiluError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DiluError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(DiluError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(DiluError):
    """A value in range that does not fit the room left now (a quota raise on a full GPU):
    the caller may try elsewhere or later. Subclasses say which room in `details()`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(DiluError):
    """The RPC exists in the API but the logic behind it has not been built yet."""

    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(DiluError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class PeerError(DiluError):
    """An error a peer (a worker, an agent) answered with, passed on with its own code so
    callers keep the retry semantics of that code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
