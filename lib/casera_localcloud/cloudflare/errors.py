"""Cloudflare's error envelope and the error codes the emulator answers with.

Codes and messages are the ones Cloudflare's API returns, as seen in client issue trackers
(81044, 81053, 81054, 81058, 7003/7000, 6003/6111, 9109, 9003, 9004, 9005, 9021). Where no
public trace was found the code is marked "guess" next to it; clients branch on the HTTP
status (the SDK maps it to an exception class) far more than on these numbers.

Every error, bad input included, is the v4 envelope ``{"success": false, "errors": [{"code",
"message"}], "messages": [], "result": null}``; the ``cloudflare`` SDK turns the status into
its exception class (400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError,
404 NotFoundError, other 4xx APIStatusError) and keeps the envelope as ``exc.body``.
Seen in the wild: 7001 "Method PUT not available for that URI." (github.com/wherelse/
cloudflare-ddns-script, README FAQ; api.cloudflare.com answers OPTIONS the same way),
6007 "Malformed JSON in request body", 81057 turned into 81058 for an identical record and
9005 for a bad A content (github.com/simplesurance/cfdns/pull/17).

Statuses matter more than codes: the ``cloudflare`` SDK retries 408, 409, 429 and 5xx, POSTs
included, so a conflict must never be a 409 here (Cloudflare answers 400 for duplicates).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CloudflareApiError(Exception):
    status: int
    code: int
    message: str
    chain: list[tuple[int, str]] = field(default_factory=list)
    extra_errors: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(f"{self.status} {self.code} {self.message}")

    def body(self) -> dict[str, object]:
        first: dict[str, object] = {"code": self.code, "message": self.message}
        if self.chain:
            first["error_chain"] = [{"code": c, "message": m} for c, m in self.chain]
        errors = [first, *({"code": c, "message": m} for c, m in self.extra_errors)]
        return {"success": False, "errors": errors, "messages": [], "result": None}


def no_route(path: str) -> CloudflareApiError:
    """Cloudflare's answer to an unknown URI and to an id that names nothing it can route to."""
    return CloudflareApiError(
        400, 7003, f"Could not route to {path}, perhaps your object identifier is invalid?",
        extra_errors=[(7000, "No route for that URI")])


def method_not_allowed(method: str) -> CloudflareApiError:
    # Code and message as Cloudflare sends them; the 405 status is a guess.
    return CloudflareApiError(405, 7001, f"Method {method} not available for that URI.")


def malformed_request(detail: str) -> CloudflareApiError:
    """A request line or header the HTTP layer could not parse (code: guess, the one Cloudflare
    gives a malformed Authorization header)."""
    return CloudflareApiError(400, 6003, "Invalid request headers", chain=[(6000, detail)])


def missing_auth() -> CloudflareApiError:
    return CloudflareApiError(400, 9106,
                              "Missing X-Auth-Key, X-Auth-Email or Authorization headers")


def bad_auth_header() -> CloudflareApiError:
    return CloudflareApiError(400, 6003, "Invalid request headers",
                              chain=[(6111, "Invalid format for Authorization header")])


def invalid_token() -> CloudflareApiError:
    # What /zones answers for a well-formed token Cloudflare does not know. A known token
    # without the permission gets 403 code 10000 "Authentication error" instead; this
    # emulator's tokens carry every permission, so only the unknown-token case exists.
    return CloudflareApiError(403, 9109, "Invalid access token")


def malformed_json() -> CloudflareApiError:
    return CloudflareApiError(400, 6007, "Malformed JSON in request body")


def record_not_found() -> CloudflareApiError:
    return CloudflareApiError(404, 81044, "Record does not exist.")


def identical_record() -> CloudflareApiError:
    return CloudflareApiError(400, 81058, "An identical record already exists.")


def host_taken_for_cname() -> CloudflareApiError:
    return CloudflareApiError(400, 81053,
                              "An A, AAAA, or CNAME record with that host already exists.")


def cname_exists() -> CloudflareApiError:
    return CloudflareApiError(400, 81054, "A CNAME record with that host already exists.")


def validation(code: int, message: str) -> CloudflareApiError:
    return CloudflareApiError(400, code, message)


def dns_validation(message: str) -> CloudflareApiError:
    """Cloudflare's generic wrapper for a DNS record it refuses, used where the specific
    inner code is not known.

    Cloudflare announced that the 1004 wrapper and its ``error_chain`` go away for DNS
    validation errors, the root cause being returned directly instead
    (github.com/cloudflare/cloudflare-docs/pull/15317, "Error chains for DNS validation
    errors"); the rules with a known code (9003, 9004, 9005, 9021, 81053, 81054, 81058)
    already answer that way here. A client must branch on ``errors[0].code``, which is 1004
    for the cases left here either way."""
    return CloudflareApiError(400, 1004, "DNS Validation Error", chain=[(1004, message)])
