"""casera-runbooks: the thin library the Casera runbooks call.

Layers, data flowing down only: params -> providers (one module per real system, each
wrapping its official client) -> steps (idempotent ensure_*/verify_*) -> runbooks -> runner.
The local cloud (``casera_localcloud``) stands beside them: it is what ``params/local.yaml``
points at, never imported by providers or steps.
"""

__version__ = "0.1.0"
