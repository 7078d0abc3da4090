"""What ``casera local status`` says about this kernel, without an engine."""

from __future__ import annotations

from casera_localcloud.nodes import service


def test_kernel_limits_follow_the_kernel_config(monkeypatch) -> None:
    monkeypatch.setattr(service, "_kernel_config",
                        lambda: {"CONFIG_IP_VS": "m", "CONFIG_INET_ESP": "y"})
    assert service.kernel_limits() == []
    monkeypatch.setattr(service, "_kernel_config", lambda: {"CONFIG_IP_VS": "m"})
    assert service.kernel_limits() == [service.ESP_MISSING]
    monkeypatch.setattr(service, "_kernel_config", dict)
    (unknown,) = service.kernel_limits()
    assert "unreadable" in unknown


def test_status_states_the_limits_of_this_machine() -> None:
    lines = service.status()
    expected = service.kernel_limits()
    assert all(line in lines for line in expected)
