"""B2's error answers: ``{"status": ..., "code": ..., "message": ...}``.

b2sdk turns (status, code) pairs into its own exception classes
(``b2sdk/_internal/exception.py: interpret_b2_error``), so the pair matters more than the
message: 401 ``bad_auth_token``/``expired_auth_token`` make b2sdk re-authorize and retry,
401 ``unauthorized`` surfaces as ``Unauthorized`` without a retry, 400 ``bad_bucket_id``
becomes ``BucketIdNotFound``, 404 ``not_found`` becomes ``FileNotPresent``.

Every error, bad input included, is this JSON object with the HTTP status repeated in it:
"Unsuccessful calls return a JSON error structure in the body of the response that includes
the status, a code that is a short string and a message that is intended only for humans"
(https://www.backblaze.com/docs/cloud-storage-native-api-error-handling-and-status-codes).
Codes used beyond ``bad_request``: ``bad_json`` (b2sdk's ``BadJson``), ``out_of_range``
(maxFileCount of the listing calls), ``method_not_allowed`` (405), as listed per call in
Backblaze's API reference (gathered in github.com/zaxbux/backblaze-b2-php/wiki/API-Error-Codes)
and in the codes clients know (docs.rs/b2-client: ``error::ErrorCode``).
"""

from __future__ import annotations

from casera.errors import CaseraError


class B2ApiError(CaseraError):
    """An error the emulator answers with, in B2's shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message
        super().__init__(f"{status} {code}: {message}")

    def body(self) -> dict[str, object]:
        return {"status": self.status, "code": self.code, "message": self.message}


def bad_request(message: str, code: str = "bad_request") -> B2ApiError:
    return B2ApiError(400, code, message)


def unauthorized(message: str = "not entitled") -> B2ApiError:
    # B2 answers a missing capability, a bucket outside the key's restriction and a name
    # outside its prefix all the same way; b2sdk appends the key's restrictions itself.
    return B2ApiError(401, "unauthorized", message)


def bad_auth_token(message: str = "Invalid authorization token") -> B2ApiError:
    return B2ApiError(401, "bad_auth_token", message)


def expired_auth_token(message: str = "Authorization token has expired") -> B2ApiError:
    return B2ApiError(401, "expired_auth_token", message)


def not_found(message: str) -> B2ApiError:
    return B2ApiError(404, "not_found", message)


def bad_json(message: str) -> B2ApiError:
    # b2sdk maps (400, "bad_json") to BadJson, a BadRequest subclass.
    return B2ApiError(400, "bad_json", message)


def out_of_range(message: str) -> B2ApiError:
    # b2sdk has no class of its own for it: BadRequest with code "out_of_range".
    return B2ApiError(400, "out_of_range", message)


def method_not_allowed(method: str, allowed: tuple[str, ...]) -> B2ApiError:
    return B2ApiError(405, "method_not_allowed",
                      f"{method} is not allowed here; use {' or '.join(allowed)}")
