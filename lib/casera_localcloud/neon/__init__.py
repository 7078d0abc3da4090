"""The local "Neon": real PostgreSQL 15 computes with TLS and SCRAM behind real PgBouncer
poolers (transaction mode), an enforced IP allowlist, point-in-time branches by real PITR,
and the part of Neon's HTTP API v2 the runbooks use (``python -m casera_localcloud.neon``).

Connecting, as to Neon: take the URI from ``GET /projects/casera-local/connection_uri``. The
endpoint names (``ep-casera-local[-pooler].local.neon``) resolve nowhere, so the URI carries
``hostaddr``; keep the name for ``sslmode=verify-full`` with ``sslrootcert`` = the CA file
``status()`` reports. Through the pooler, psycopg needs ``prepare_threshold=None``: Debian 12's
PgBouncer 1.18 cannot keep prepared statements in transaction mode (Neon's newer PgBouncer
can), so code that works here also works on Neon, not always the other way round.

Modules: ``config`` (paths, ports), ``tls`` (CA and certificate), ``cluster`` (PostgreSQL
instances), ``pgbouncer``, ``pitr`` (archive, base backups, restore), ``instances`` (which
compute and pooler a branch has), ``state`` (the project on disk), ``api`` and ``views`` (HTTP
server), ``service`` (up/down/status and the changes the API applies).
"""

from casera_localcloud.neon.service import down, status, up

__all__ = ["down", "status", "up"]
