"""The Casera stack file, one template for every environment (local, staging, production)."""

from __future__ import annotations

from casera.stack.render import (
    DOZZLE_PORT,
    REPLICA_RANGES,
    SECRETS,
    SEED_NETWORK,
    SERVICES,
    DatabaseSettings,
    NetworkSettings,
    StackSettings,
    StackSettingsError,
    render_stack,
    settings_from_params,
    validate,
    write_stack,
)

__all__ = [
    "DOZZLE_PORT",
    "REPLICA_RANGES",
    "SECRETS",
    "SEED_NETWORK",
    "SERVICES",
    "DatabaseSettings",
    "NetworkSettings",
    "StackSettings",
    "StackSettingsError",
    "render_stack",
    "settings_from_params",
    "validate",
    "write_stack",
]
