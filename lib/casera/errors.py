"""One error base for the whole library; raise these, never ``sys.exit``."""

from __future__ import annotations

from dataclasses import dataclass


class CaseraError(Exception):
    """Base of every error the library raises on purpose."""


@dataclass(frozen=True)
class ParamIssue:
    key: str
    problem: str
    fix: str


class ParamsError(CaseraError):
    """A params file or override is invalid. Raised before any remote call.

    Carries every issue found, not just the first, so one edit can fix them all.
    """

    def __init__(self, file: str, issues: list[ParamIssue]) -> None:
        self.file, self.issues = file, issues
        lines = [f"{file}: {i.key}: {i.problem}. Fix: {i.fix}" for i in issues]
        super().__init__("invalid params\n  " + "\n  ".join(lines))


class SecretMissingError(CaseraError):
    """A secret a step needs is not set in the environment nor in the secrets file."""


class SecretLeakError(CaseraError):
    """A secret value was found where it must never be (an output notebook, a params file)."""


class ApprovalRefused(CaseraError):
    """A destructive step was not approved; the run stops with status ``refused``."""


class WaitTimeout(CaseraError):
    """A wait ran out of time; the message says what it was waiting for."""


class LockHeld(CaseraError):
    """Another run holds the environment's lock."""


class ProviderError(CaseraError):
    """A call to a real system failed; keeps the system's own code and details."""

    def __init__(self, system: str, message: str, code: str | None = None,
                 details: object = None) -> None:
        self.system, self.code, self.details = system, code, details
        super().__init__(f"{system}: {message}" + (f" (code {code})" if code else ""))


class StepFailed(CaseraError):
    """A step's verification failed after it ran."""
