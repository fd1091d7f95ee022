"""The error tree. Every error a client can see is one of these; each knows its Qianfan code.

    QfserveError                    code, message; never raised itself
    ├── ClientError                 the request is at fault
    │   ├── UnknownRoute            3      no such route
    │   ├── MissingToken            100    access_token absent or malformed
    │   ├── InvalidToken            110    unknown or revoked token
    │   │   └── InvalidIamToken     110    V2 API key or bearer token: malformed, unknown, revoked
    │   │       └── ExpiredIamToken 111    V2 bearer token past its expiry
    │   ├── ExpiredToken            111    token past its expiry
    │   ├── InvalidAppId            6      V2 `appid` header names another app than the credential's
    │   ├── InvalidArgument         336001 not a JSON object, or a field of the wrong type
    │   ├── InvalidJSON             336002 not JSON at all
    │   ├── RuleViolation           336003 a rule of the API broken; the message says which
    │   ├── UnknownEndpoint         336005 no such `{endpoint}`
    │   └── MethodNotAllowed        336101 e.g. GET on the chat route
    │   ├── NoPermission            6      the app may not use this endpoint
    │   ├── SignatureInvalid        14     bad or expired bce-auth-v1 signature
    │   ├── AppUnavailable          15     the app is deleted or disabled
    │   └── QuotaExceeded                  an app's quota is spent (the SDK retries 18, 336501/2)
    │       ├── DailyLimit          17
    │       ├── QpsLimit            18
    │       ├── TotalLimit          19
    │       ├── RpmLimit            336501
    │       └── TpmLimit            336502
    ├── OverloadedError             336100 the waiting queue is full or the wait timed out
    └── ServerError                 our side is at fault
        ├── EngineUnavailable       2      engine not loaded yet, shutting down, or dead
        └── InternalError           336000 a bug or an unexpected failure; logged, never detailed

OAuth errors (`/oauth/2.0/token`) have their own RFC 6749 shape: `OAuthError`, outside the tree.

Foreign exceptions (llama.cpp, the database, upstream HTTP) are translated into these where they
enter: a bare `ValueError` never reaches a client as an answer.
"""

from __future__ import annotations


class QfserveError(Exception):
    code: int = 1
    message: str = "Unknown error"
    http_status: int = 500  # for dialects that use real HTTP statuses (OpenAI)

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


class ClientError(QfserveError):
    http_status = 400


class UnknownRoute(ClientError):
    code, message, http_status = 3, "Unsupported openapi method", 404


class MissingToken(ClientError):
    code, message, http_status = 100, "Invalid parameter", 401


class InvalidToken(ClientError):
    code, message, http_status = 110, "Access token invalid or no longer valid", 401


class ExpiredToken(ClientError):
    code, message, http_status = 111, "Access token expired", 401


class InvalidIamToken(InvalidToken):
    message = "Invalid API key or bearer token"
    v2_code = "invalid_iam_token"


class ExpiredIamToken(InvalidIamToken):
    code, message = 111, "Bearer token expired"


class InvalidAppId(ClientError):
    code, message, http_status = 6, "The appid header does not name this credential's app", 401
    v2_code = "invalid_appid"


class InvalidArgument(ClientError):
    code, message = 336001, "Invalid Argument"


class InvalidJSON(ClientError):
    code, message = 336002, "Invalid JSON"


class RuleViolation(ClientError):
    code = 336003


class UnknownEndpoint(ClientError):
    code, message, http_status = 336005, "API name not exist", 404


class MethodNotAllowed(ClientError):
    code, message, http_status = 336101, "Invalid HTTP Method", 405


class NoPermission(ClientError):
    code, message, http_status = 6, "No permission to access data", 403


class SignatureInvalid(ClientError):
    code, message, http_status = 14, "IAM Certification failed", 401


class AppUnavailable(ClientError):
    code, message, http_status = 15, "app not exists or create failed", 403


class QuotaExceeded(ClientError):
    http_status = 429


class DailyLimit(QuotaExceeded):
    code, message = 17, "Open api daily request limit reached"


class QpsLimit(QuotaExceeded):
    code, message = 18, "Open api qps request limit reached"


class TotalLimit(QuotaExceeded):
    code, message = 19, "Open api total request limit reached"


class RpmLimit(QuotaExceeded):
    code, message = 336501, "Rate limit reached for RPM"


class TpmLimit(QuotaExceeded):
    code, message = 336502, "Rate limit reached for TPM"


class OverloadedError(QfserveError):
    code, http_status = 336100, 503
    message = "人工智能是一项革命性的技术。与我互动的人过多,请您稍后重新向我提问。"


class ServerError(QfserveError):
    http_status = 500


class EngineUnavailable(ServerError):
    code, message, http_status = 2, "Service temporarily unavailable", 503


class InternalError(ServerError):
    code, message = 336000, "Internal error"


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error of the token route."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description
