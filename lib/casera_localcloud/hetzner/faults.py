"""Fault injection, off by default, so the runbooks' retry paths can be tested.

Set from (later wins): ``<state dir>/faults.json``, the environment variable
``CASERA_HETZNER_FAULTS`` (JSON, or the path of a JSON file), and at run time
``POST /v1/_emulator/faults`` with the same keys. ``DELETE /v1/_emulator/faults`` turns
every fault off again (a test suite's teardown calls it). What is set at run time lives only
in memory: a restarted emulator reads faults.json and the environment variable again, so
only faults configured on purpose survive a restart. An injected rate limit or 503 is decided
before the request touches any state: hcloud-python replays POSTs that got
``rate_limit_exceeded``, and the replay must not find a half-made server.
"""

from __future__ import annotations

import json
import os
import random
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from casera_localcloud.hetzner.errors import ApiError

ENV_VAR = "CASERA_HETZNER_FAULTS"


@dataclass
class FaultSettings:
    rate_limit_share: float = 0.0
    error_503_share: float = 0.0
    action_delay_s: float = 0.0
    action_fail_share: float = 0.0
    seed: int | None = None
    # Which request methods the shares apply to (empty: all). With a seed and only the POSTs
    # a runbook sends in a fixed order, a test gets the same injected faults every run.
    methods: list[str] = field(default_factory=list)
    injected: int = 0  # how many errors were injected since the emulator started (read-only)


class Faults:
    def __init__(self, settings: FaultSettings | None = None) -> None:
        self._lock = threading.Lock()
        self.settings = settings or FaultSettings()
        self._random = random.Random(self.settings.seed)

    @classmethod
    def from_config(cls, state_dir: Path | None) -> Faults:
        merged: dict[str, Any] = {}
        if state_dir and (state_dir / "faults.json").exists():
            merged.update(json.loads((state_dir / "faults.json").read_text()))
        raw = os.environ.get(ENV_VAR, "").strip()
        if raw:
            merged.update(json.loads(raw if raw.startswith("{") else Path(raw).read_text()))
        faults = cls()
        faults.update(merged)
        return faults

    def update(self, values: dict[str, Any]) -> dict[str, Any]:
        known = {f.name for f in fields(FaultSettings)}
        values = {k: v for k, v in values.items() if k != "injected"}
        unknown = set(values) - known
        if unknown:
            raise ApiError("invalid_input", f"unknown fault settings: {sorted(unknown)}")
        with self._lock:
            merged = {**asdict(self.settings), **values}
            try:
                settings = FaultSettings(**merged)
                for name in ("rate_limit_share", "error_503_share", "action_fail_share"):
                    share = float(getattr(settings, name))
                    if not 0 <= share <= 1:
                        raise ValueError(f"{name} must be between 0 and 1")
                    setattr(settings, name, share)
                settings.action_delay_s = float(settings.action_delay_s)
                settings.methods = [str(m).upper() for m in settings.methods or []]
            except (TypeError, ValueError) as exc:
                raise ApiError("invalid_input", f"fault settings: {exc}") from exc
            self.settings = settings
            if "seed" in values:
                self._random = random.Random(settings.seed)
            return asdict(self.settings)

    def reset(self) -> dict[str, Any]:
        """Every fault off and a fresh random stream; the count of injected errors stays, as
        it counts since the emulator started."""
        with self._lock:
            self.settings = FaultSettings(injected=self.settings.injected)
            self._random = random.Random(None)
            return asdict(self.settings)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self.settings)

    def _roll(self, share: float) -> bool:
        with self._lock:
            return share > 0 and self._random.random() < share

    def check_request(self, method: str = "GET") -> None:
        """Raise the injected error for this request, if any. Call before any state change."""
        if self.settings.methods and method.upper() not in self.settings.methods:
            return
        if self._roll(self.settings.rate_limit_share):
            self.settings.injected += 1
            raise ApiError("rate_limit_exceeded", "limit of 3600 requests per hour reached "
                           "(injected by the local cloud)")
        if self._roll(self.settings.error_503_share):
            self.settings.injected += 1
            raise ApiError("unavailable", "service unavailable (injected by the local cloud)",
                           status=503)

    def action_should_fail(self) -> bool:
        return self._roll(self.settings.action_fail_share)
