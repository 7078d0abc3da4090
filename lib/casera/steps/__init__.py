"""Idempotent steps: ``ensure_*`` makes a thing so, ``verify_*`` checks it; each returns a
:class:`casera.result.StepResult` and honours ``ctx.dry_run``."""
