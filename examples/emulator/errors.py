"""Anthropic's error envelope, so the SDK raises the same exception classes it raises against the real API."""

from __future__ import annotations

from typing import Any

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

DEFAULT_MESSAGES: dict[int, str] = {
    400: "Invalid request",
    404: "Not Found",
    429: (
        "This request would exceed your organization's rate limit of 50,000 input tokens per minute. "
        "For details, refer to: https://docs.claude.com/en/api/rate-limits."
    ),
    500: "Internal server error",
    529: "Overloaded",
}


class ApiError(Exception):
    """An HTTP error answer; raised inside the emulator and turned into the envelope by the backend."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if status not in ERROR_TYPES:
            raise ValueError(f"unsupported error status {status}; use one of {sorted(ERROR_TYPES)}")
        self.status = status
        self.error_type = ERROR_TYPES[status]
        self.message = message if message is not None else DEFAULT_MESSAGES.get(status, self.error_type)
        self.retry_after = retry_after
        self.extra_headers = dict(headers or {})
        super().__init__(f"{status} {self.error_type}: {self.message}")

    def headers(self) -> dict[str, str]:
        """`retry-after` in (possibly fractional) seconds, which the SDK honours before retrying."""
        out = dict(self.extra_headers)
        if self.retry_after is not None:
            out["retry-after"] = f"{self.retry_after:g}"
        return out

    def body(self, request_id: str) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": self.error_type, "message": self.message},
            "request_id": request_id,
        }


def invalid(message: str) -> ApiError:
    """A 400 `invalid_request_error`, the shape of every request-validation failure."""
    return ApiError(400, message)
