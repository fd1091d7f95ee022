"""The error tree. Every error a client can see is one of these; each knows its Qianfan V1 code,
its V2 code name and its HTTP status (for the dialects that use real statuses).

    QfserveError                  V1      V2 code                  when
    ├── ClientError                                                the request is at fault
    │   ├── UnknownRoute          3       not_found                no such route
    │   ├── MissingToken          100     invalid_iam_token        no credentials at all
    │   ├── InvalidToken          110     invalid_iam_token        unknown or revoked token, key
    │   │   └── InvalidIamToken   110     invalid_iam_token        V2 key or bearer token
    │   │       └── ExpiredIamToken 111   invalid_iam_token        V2 bearer token expired
    │   ├── ExpiredToken          111     invalid_iam_token        token past its expiry
    │   ├── InvalidAppId          6       invalid_appid            `appid` names another app
    │   ├── InvalidArgument       336001  invalid_argument         a field's type or value
    │   │   └── BodyTooLarge      336001  invalid_argument         the body is over its bound
    │   ├── InvalidJSON           336002  malformed_json           not JSON at all
    │   ├── RuleViolation         336003  invalid_argument         a rule broken (the message)
    │   │   ├── InvalidMessages   336003  invalid_messages         messages' order, roles, count
    │   │   ├── TooManyCharacters 336003  characters_too_long      a limit in characters
    │   │   └── TooManyTokens     336003  tokens_too_long          no room left to answer
    │   ├── UnknownEndpoint       336005  invalid_model            no such endpoint or model
    │   ├── MethodNotAllowed      336101  method_not_supported     e.g. GET on the chat route
    │   ├── NoPermission          6       no_parameter_permission  endpoint not allowed
    │   ├── SignatureInvalid      14      invalid_iam_token        bad bce-auth-v1 signature
    │   ├── AppUnavailable        15      invalid_iam_token        app deleted or disabled
    │   └── QuotaExceeded                                          an app's quota is spent
    │       ├── DailyLimit        17      rpm_rate_limit_exceeded
    │       ├── QpsLimit          18      rpm_rate_limit_exceeded
    │       ├── TotalLimit        19      rpm_rate_limit_exceeded
    │       ├── RpmLimit          336501  rpm_rate_limit_exceeded
    │       └── TpmLimit          336502  tpm_rate_limit_exceeded
    ├── OverloadedError           336100  server_overloaded        waiting queue full or timed out
    └── ServerError                                                our side is at fault
        ├── EngineUnavailable     2       service_unavailable      not loaded, draining, dead, or
        │                                                          the database or Redis is down
        └── InternalError         336000  internal_error           a bug; logged, never detailed

The SDK retries V1's 2, 18, 336100, 336501 and 336502; V2's 429 and 503 are retried by clients
that follow OpenAI's conventions.

OAuth errors (`/oauth/2.0/token`) have their own RFC 6749 shape: `OAuthError`, outside the tree.

Foreign exceptions (llama.cpp, the database, Redis, upstream HTTP) are translated into these where
they enter: a bare `ValueError` never reaches a client as an answer.
"""

from __future__ import annotations


class QfserveError(Exception):
    code: int = 1
    v2_code: str = "internal_error"
    message: str = "Unknown error"
    http_status: int = 500  # for dialects that use real HTTP statuses (OpenAI)
    # Set by the request pipeline, for the dialect that renders the error.
    request_id: str | None = None
    headers: dict[str, str] | None = None

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)

    def at(self, request_id: str, headers: dict[str, str]) -> QfserveError:
        """This error, as the answer to one request (its id, its rate-limit headers)."""
        self.request_id, self.headers = request_id, headers
        return self


class ClientError(QfserveError):
    http_status = 400


class UnknownRoute(ClientError):
    code, message, http_status = 3, "Unsupported openapi method", 404
    v2_code = "not_found"


class MissingToken(ClientError):
    code, message, http_status = 100, "Invalid parameter: access_token is missing", 401
    v2_code = "invalid_iam_token"


class InvalidToken(ClientError):
    code, message, http_status = 110, "Access token invalid or no longer valid", 401
    v2_code = "invalid_iam_token"


class ExpiredToken(ClientError):
    code, message, http_status = 111, "Access token expired", 401
    v2_code = "invalid_iam_token"


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
    v2_code = "invalid_argument"


class BodyTooLarge(InvalidArgument):
    http_status = 413


class InvalidJSON(ClientError):
    code, message = 336002, "Invalid JSON"
    v2_code = "malformed_json"


class RuleViolation(ClientError):
    code = 336003
    v2_code = "invalid_argument"


class InvalidMessages(RuleViolation):
    v2_code = "invalid_messages"


class TooManyCharacters(RuleViolation):
    v2_code = "characters_too_long"


class TooManyTokens(RuleViolation):
    v2_code = "tokens_too_long"


class UnknownEndpoint(ClientError):
    code, message, http_status = 336005, "API name not exist", 404
    v2_code = "invalid_model"


class MethodNotAllowed(ClientError):
    code, message, http_status = 336101, "Invalid HTTP Method", 405
    v2_code = "method_not_supported"


class NoPermission(ClientError):
    code, message, http_status = 6, "No permission to access data", 403
    v2_code = "no_parameter_permission"


class SignatureInvalid(ClientError):
    code, message, http_status = 14, "IAM Certification failed", 401
    v2_code = "invalid_iam_token"


class AppUnavailable(ClientError):
    code, message, http_status = 15, "app not exists or create failed", 403
    v2_code = "invalid_iam_token"


class QuotaExceeded(ClientError):
    http_status = 429


class DailyLimit(QuotaExceeded):
    code, message = 17, "Open api daily request limit reached"
    v2_code = "rpm_rate_limit_exceeded"


class QpsLimit(QuotaExceeded):
    code, message = 18, "Open api qps request limit reached"
    v2_code = "rpm_rate_limit_exceeded"


class TotalLimit(QuotaExceeded):
    code, message = 19, "Open api total request limit reached"
    v2_code = "rpm_rate_limit_exceeded"


class RpmLimit(QuotaExceeded):
    code, message = 336501, "Rate limit reached for RPM"
    v2_code = "rpm_rate_limit_exceeded"


class TpmLimit(QuotaExceeded):
    code, message = 336502, "Rate limit reached for TPM"
    v2_code = "tpm_rate_limit_exceeded"


class OverloadedError(QfserveError):
    code, http_status = 336100, 503
    message = "人工智能是一项革命性的技术。与我互动的人过多,请您稍后重新向我提问。"
    v2_code = "server_overloaded"


class ServerError(QfserveError):
    http_status = 500


class EngineUnavailable(ServerError):
    code, message, http_status = 2, "Service temporarily unavailable", 503
    v2_code = "service_unavailable"


class InternalError(ServerError):
    code, message = 336000, "Internal error"
    v2_code = "internal_error"


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error of the token route."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description
