"""The local cloud: what ``params/local.yaml`` points at.

Emulators stand in only for the SaaS APIs (Hetzner, Neon's HTTP API, B2, Cloudflare); the
infrastructure behind them is real: a Docker engine whose containers are the "servers", each
running its own dockerd and sshd; PostgreSQL behind PgBouncer; a Docker registry.

Nothing in providers/ or steps/ imports this package: they only see endpoints from params.
"""
