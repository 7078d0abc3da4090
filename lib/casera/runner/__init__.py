"""The runner: ``casera run RUNBOOK --env ENV`` wraps papermill with params, a per-environment
lock, run metadata, secret scrubbing and an audit trail under ``outputs/``."""
