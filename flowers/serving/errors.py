"""Errors as TF Serving reports them: a canonical (gRPC) status code and a message.

REST answers `{"error": message}` with the HTTP status TF Serving's http_server.cc
maps each code to; gRPC aborts with the code itself.
"""
import re

import grpc

Code = grpc.StatusCode

# tensorflow_serving/model_servers/http_server.cc ToHTTPStatusCode
HTTP_STATUS = {
    Code.OK: 200, Code.CANCELLED: 499, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504, Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403, Code.RESOURCE_EXHAUSTED: 429, Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409, Code.OUT_OF_RANGE: 400, Code.UNIMPLEMENTED: 501, Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500, Code.UNAUTHENTICATED: 401,
}
_BY_NUMBER = {code.value[0]: code for code in Code}


class ServingError(Exception):
    def __init__(self, code, message, http_status=None):
        super().__init__(message)
        self.code, self.message = code, message
        self.http_status = http_status or HTTP_STATUS.get(code, 500)


def invalid(message):
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message):
    return ServingError(Code.NOT_FOUND, message)


# Absolute file paths and bucket URLs: logged, never sent to clients.
_PATH = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|(?<![\w.])/)[^\s'\",;:]*")
INTERNAL_MESSAGE = "Internal error; see the server log"


def redact_paths(text):
    return _PATH.sub("<path>", text)


def internal():
    """What a client sees of an unexpected failure: no exception names, paths or traces."""
    return ServingError(Code.INTERNAL, INTERNAL_MESSAGE)


def from_tf_error(e):
    """tf.errors.OpError -> ServingError with the same canonical code (TF and gRPC share them).

    Only the line that states the problem is kept, without TF's graph node names and stack.
    """
    text = (getattr(e, "message", None) or str(e)).strip()
    lines = [line for line in text.splitlines() if line.strip() and not line[0].isspace()
             and not line.startswith(("Graph execution error", "Detected at node", "<stack traces"))]
    message = re.sub(r"\s*(\[\[|\[Op:).*$", "", lines[-1]) if lines else text or type(e).__name__
    return ServingError(_BY_NUMBER.get(e.error_code, Code.UNKNOWN), redact_paths(message))
