"""The Docker Engine API version is negotiated with each engine, never pinned.

Docker Engine 29 (Hetzner's docker-ce app) refuses clients below API 1.44 with a 400 (moby/moby
#51186; "API version: 1.52 (minimum version 1.44)" in docs.docker.com/reference/api/engine for
29.0.4), and Debian's docker.io 20.10 (the local nodes) refuses anything above 1.41 ("client
version 1.44 is too new"). The local engine cannot play Docker 29's part (its minimum is fixed
at 1.12), so these tests run the SDK path against an engine that answers exactly as each does:
the unversioned GET /version, and a 400 with moby's wording for a version outside its range.
"""

from __future__ import annotations

import ast
import re
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import paramiko
import pytest
from docker.transport import UnixHTTPAdapter
from docker.utils import version_lt
from http_fixtures import JsonHandler

from casera.errors import ProviderError
from casera.providers import docker_swarm
from casera.providers.ssh import HostKeyError, KnownHosts

LIB = Path(__file__).resolve().parents[2] / "lib"

# GET /version of each engine (the fields negotiation reads; values as the engines report).
DOCKER_29 = {"Version": "29.0.4", "ApiVersion": "1.52", "MinAPIVersion": "1.44"}
DEBIAN_20_10 = {"Version": "20.10.24+dfsg1", "ApiVersion": "1.41", "MinAPIVersion": "1.12"}
NOT_A_MANAGER = ("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm "
                 "join\" to connect this node to swarm and try again.")


class FakeEngine(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, version: dict[str, str]) -> None:
        self.version, self.paths = version, []
        super().__init__(path, _Handler)


class _Handler(JsonHandler):
    server: FakeEngine

    def address_string(self) -> str:  # a unix socket has no peer address
        return "unix"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        engine = self.server.version
        self.server.paths.append(self.path)
        path = self.path.split("?", 1)[0]
        match = re.match(r"^/v([0-9.]+)(/.*)$", path)
        if match:
            asked, path = match.groups()
            # moby api/server/middleware/version.go wording, status 400.
            if version_lt(asked, engine["MinAPIVersion"]):
                return self.send_json(400, {"message": (
                    f"client version {asked} is too old. Minimum supported API version is "
                    f"{engine['MinAPIVersion']}, please upgrade your client to a newer version")})
            if version_lt(engine["ApiVersion"], asked):
                return self.send_json(400, {"message": (
                    f"client version {asked} is too new. Maximum supported API version is "
                    f"{engine['ApiVersion']}")})
        if path == "/version":
            return self.send_json(200, engine)
        if path == "/info":
            return self.send_json(200, {"Swarm": {"LocalNodeState": "active", "NodeID": "n1",
                                              "ControlAvailable": True,
                                              "Cluster": {"ID": "c1"}, "Managers": 3,
                                              "Nodes": 3, "Error": ""}})
        if path == "/nodes":
            # A node outside any swarm: moby daemon/cluster/helpers.go errNoManager, served as
            # 503 (errdefs.Unavailable).
            return self.send_json(503, {"message": NOT_A_MANAGER})
        return self.send_json(404, {"message": f"page not found: {path}"})


@pytest.fixture(params=[DOCKER_29, DEBIAN_20_10], ids=["docker-29", "debian-20.10"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeEngine]:
    server = FakeEngine(str(tmp_path / "docker.sock"), request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _client_at(sock: str, version: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=f"unix://{sock}", version=version)


def test_docker_29_refuses_the_old_pin_as_the_real_engine_does(tmp_path: Path) -> None:
    server = FakeEngine(str(tmp_path / "d.sock"), DOCKER_29)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(docker.errors.APIError, match="1.41 is too old.*is 1.44"):
            _client_at(server.server_address, "1.41").info()  # the pin this project had
    finally:
        server.shutdown()
        server.server_close()


def test_negotiation_speaks_what_each_engine_accepts(engine: FakeEngine) -> None:
    client = _client_at(engine.server_address, docker.constants.MINIMUM_DOCKER_API_VERSION)
    chosen = docker_swarm.negotiate(client, "test engine")
    expected = {"1.52": docker_swarm.SDK_MAX_API_VERSION, "1.41": "1.41"}[
        engine.version["ApiVersion"]]
    assert chosen == expected
    assert not version_lt(chosen, engine.version["MinAPIVersion"])
    assert docker_swarm.swarm_state(client)["cluster_id"] == "c1"
    # The one unversioned question, then everything at the negotiated version.
    assert engine.paths[0] == "/version"
    assert engine.paths[1:] and all(p.startswith(f"/v{chosen}/") for p in engine.paths[1:])


def test_connect_negotiates_before_any_call(engine: FakeEngine,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The SSH transport replaced by the fake engine's socket; everything else is connect()'s.
    monkeypatch.setattr(docker_swarm, "_KeyedSSHAdapter", lambda *args, **kwargs:
                        UnixHTTPAdapter(f"http+unix://{engine.server_address}"))
    client = docker_swarm.connect("10.0.0.9", 22, "casera", "/nonexistent/key",
                                  known_hosts=KnownHosts(Path("/nonexistent/known_hosts")))
    try:
        assert docker_swarm.swarm_state(client)["state"] == "active"
        assert client.api.api_version not in ("", docker.constants.MINIMUM_DOCKER_API_VERSION)
        assert engine.paths[0] == "/version"
        assert all(p.startswith(f"/v{client.api.api_version}/") for p in engine.paths[1:])
    finally:
        client.close()


def test_engine_errors_become_provider_errors_with_the_engine_s_words(
        engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_swarm, "_KeyedSSHAdapter", lambda *args, **kwargs:
                        UnixHTTPAdapter(f"http+unix://{engine.server_address}"))
    client = docker_swarm.connect("10.0.0.9", 22, "casera", "/nonexistent/key",
                                  known_hosts=KnownHosts(Path("/nonexistent/known_hosts")))
    try:
        with pytest.raises(ProviderError) as caught:
            docker_swarm.nodes(client)
        assert caught.value.system == "docker" and caught.value.code == "503"
        assert "not a swarm manager" in str(caught.value) and "nodes" in str(caught.value)
        assert isinstance(caught.value.__cause__, docker.errors.APIError)
        with pytest.raises(ProviderError, match="page not found") as caught:
            docker_swarm.tasks(client)
        assert caught.value.code == "404"
    finally:
        client.close()


def test_a_failed_transport_is_an_ssh_provider_error() -> None:
    @docker_swarm.mapped
    def dial() -> None:
        raise paramiko.SSHException("Error reading SSH protocol banner")

    with pytest.raises(ProviderError, match="Error reading SSH protocol banner") as caught:
        dial()
    assert caught.value.system == "ssh"

    @docker_swarm.mapped
    def pinned() -> None:
        raise HostKeyError("HOST KEY CHANGED for node casera-1")

    # The project's own errors pass through as themselves: a changed key must stop the run.
    with pytest.raises(HostKeyError):
        pinned()


@pytest.mark.parametrize("version, message", [
    ({"Version": "31.0.0", "ApiVersion": "1.60", "MinAPIVersion": "1.55"},
     r"accepts API 1\.55 to 1\.60.*upgrade the `docker` Python package"),
    ({"Version": "1.11.0", "ApiVersion": "1.23", "MinAPIVersion": "1.12"},
     r"speaks at most API 1\.23.*upgrade Docker there"),
    ({"Version": "?"}, "has no ApiVersion"),
])
def test_no_common_version_is_a_clear_error_naming_the_host(version: dict[str, str],
                                                            message: str) -> None:
    with pytest.raises(docker_swarm.EngineAPIVersionError, match=message) as caught:
        docker_swarm.negotiate_api_version(version, "docker on 10.0.0.9")
    assert "docker on 10.0.0.9" in str(caught.value)


def test_cli_commands_clear_an_inherited_pin() -> None:
    line = docker_swarm.cli("stack deploy -c f casera")
    assert line.startswith("env -u DOCKER_API_VERSION docker ")
    assert line.endswith("stack deploy -c f casera")


# --- no pin anywhere in lib/ ------------------------------------------------------------------

_TEXT_PINS = [
    (re.compile(r"DOCKER_API_VERSION\s*[=:]\s*\S"), "DOCKER_API_VERSION set (pins the CLI/SDK)"),
    # A request path such as /v1.41/containers/json; not a docs URL (.../engine/version/v1.52/).
    (re.compile(r"(?<!/version)/v1\.\d+/"), "a versioned Engine API path"),
    (re.compile(r"(?i)\bapi_?version\b\s*[=:]\s*[\"']?v?1\.\d+"), "an API version constant"),
    (re.compile(r"\bversion\s*=\s*[\"']v?1\.\d+[\"']"), "a version= argument"),
]
_CLIENTS = ("DockerClient", "APIClient", "from_env")


def _pins_in_text(text: str) -> list[str]:
    return [f"line {text.count(chr(10), 0, m.start()) + 1}: {why}: {m.group(0)!r}"
            for pattern, why in _TEXT_PINS for m in pattern.finditer(text)]


def _pins_in_python(text: str) -> list[str]:
    """Docker client constructions whose ``version`` is a literal other than "auto"."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in _CLIENTS:
            continue
        for kw in node.keywords:
            if (kw.arg == "version" and isinstance(kw.value, ast.Constant)
                    and kw.value.value not in (None, "auto")):
                found.append(f"line {node.lineno}: {name}(version={kw.value.value!r})")
    return found


def test_the_pin_detector_catches_the_old_code() -> None:
    old = ('API_VERSION = "1.41"\n'
           'client = docker.DockerClient(base_url="unix:///x", version="1.41")\n'
           "export DOCKER_API_VERSION=1.41\n"
           "url = '/v1.41/containers/json'\n")
    assert len(_pins_in_text(old)) == 4
    assert len(_pins_in_python(old.split("export")[0])) == 1
    assert not _pins_in_text('version="auto"\nenv -u DOCKER_API_VERSION docker stack deploy\n'
                             "# https://docs.docker.com/reference/api/engine/version/v1.52/")


def test_no_docker_api_version_pin_remains_in_lib() -> None:
    files = [p for p in LIB.rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and p.suffix in (".py", ".yml", ".yaml", ".sh", ".tmpl", ".conf", ".json", ".txt",
                              ".cfg", ".service", ".toml", "")]
    assert any(p.name == "docker_swarm.py" for p in files)  # the scan covers the provider
    pins = {}
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found = _pins_in_text(text) + (_pins_in_python(text) if path.suffix == ".py" else [])
        if found:
            pins[str(path.relative_to(LIB))] = found
    assert not pins, f"Docker API version pinned (negotiate instead): {pins}"


def test_every_docker_command_over_ssh_goes_through_cli() -> None:
    # The CLI on a node negotiates by itself unless DOCKER_API_VERSION pins it; docker_swarm.cli
    # clears that pin, so no `docker ...` line may reach a node's shell without it.
    raw = re.compile(r"""\b(?:ssh\.run|conn\.run|\.run)\(\s*\w+\s*,\s*f?["']docker\s""")
    offenders = {str(p.relative_to(LIB)): [m.group(0) for m in raw.finditer(p.read_text())]
                 for p in LIB.rglob("*.py")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, offenders
    assert raw.search('ssh.run(conn, "docker version")')  # the detector sees the old form
    assert raw.search("ssh.run(conn, f\"docker stack deploy -c {x}\")")
