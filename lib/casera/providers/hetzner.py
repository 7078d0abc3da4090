"""Hetzner Cloud through the official ``hcloud`` client."""

from __future__ import annotations

from hcloud import Client, exponential_backoff_function

from casera.operator_secrets import Secret


def client(api_endpoint: str, token: Secret, timeout: float = 30.0) -> Client:
    # Exponential polling: actions such as server creation take tens of seconds, and the
    # default 1 s poll would spend the project's 3600 requests/hour on waiting.
    return Client(token=token.reveal(), api_endpoint=api_endpoint,
                  application_name="casera-runbooks", timeout=timeout,
                  poll_interval=exponential_backoff_function(base=1.0, multiplier=2, cap=5.0,
                                                             jitter=True),
                  poll_max_retries=240)
