"""hcloud's exceptions mapped onto :class:`casera.errors.ProviderError`, the one error a step
sees from Hetzner: the API's own code (``uniqueness_error``, ``invalid_input``, ...) and
details are kept, so a caller can still tell a taken name from a refusal.

hcloud-python raises :class:`hcloud.APIException` for an error answer (code, message,
details: https://docs.hetzner.cloud/reference/cloud#errors), other
:class:`hcloud.HCloudException` subclasses for failed or timed-out actions, and requests'
exceptions (OSErrors) when the endpoint cannot be reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hcloud import APIException, HCloudException

from casera.errors import ProviderError

SYSTEM = "hetzner"


@contextmanager
def hetzner_errors(what: str, where: str = "") -> Iterator[None]:
    """Run the calls inside as ``what`` (said in the error), against ``where`` (the endpoint,
    said when it cannot be reached)."""
    try:
        yield
    except APIException as exc:
        raise ProviderError(SYSTEM, f"{what}: {exc.message}", str(exc.code),
                            exc.details) from None
    except HCloudException as exc:
        raise ProviderError(SYSTEM, f"{what}: {type(exc).__name__}: {exc}") from None
    except OSError as exc:  # requests' ConnectionError and Timeout are OSErrors
        at = f" at {where}" if where else ""
        raise ProviderError(SYSTEM, f"{what}{at}: {type(exc).__name__}: {exc}") from None
