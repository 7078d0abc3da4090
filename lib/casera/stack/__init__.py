"""The Casera stack file, one template for every environment (local, staging, production)."""

from __future__ import annotations

from casera.stack.render import (
    DOZZLE_PORT,
    REPLICA_RANGES,
    SECRET_ENV_VARS,
    SECRETS,
    SEED_NETWORK,
    SERVICE_SECRETS,
    SERVICES,
    DatabaseSettings,
    NetworkSettings,
    SecretsSource,
    StackSettings,
    StackSettingsError,
    file_forms,
    render_stack,
    secret_env_in,
    secret_env_var,
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
    "SERVICE_SECRETS",
    "SecretsSource",
    "secret_env_var",
    "SECRET_ENV_VARS",
    "secret_env_in",
    "file_forms",
    "render_stack",
    "settings_from_params",
    "validate",
    "write_stack",
]
