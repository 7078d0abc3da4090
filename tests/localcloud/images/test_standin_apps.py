"""The stand-in apps as local processes against real redis-server, PostgreSQL (TLS, SCRAM) and
PgBouncer in transaction mode: what the runbooks look at, and that no secret value leaks."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from casera.progress import wait_for
from casera_localcloud.images.apps import common, dozzle

PLANTED_KEY = "planted-secret-key-" + os.urandom(6).hex()
PLANTED_APNS = "planted-apns-" + os.urandom(6).hex()


def _secrets_dir(tmp_path: Path, **values: str) -> Path:
    directory = tmp_path / "run-secrets"
    directory.mkdir(exist_ok=True)
    for name, value in values.items():
        (directory / name).write_text(value + "\n")
    return directory


def _api_env(tmp_path: Path, postgres, redis_server, **extra: str) -> dict[str, str]:
    env = {
        "CASERA_SECRETS_DIR": str(_secrets_dir(tmp_path, db_password=postgres.password)),
        "CASERA_SECRET_NAMES": "db_password,secret_key,apns_key",
        "DB_HOST": "127.0.0.1", "DB_PORT": str(postgres.pooler_port),
        "DB_NAME": postgres.dbname, "DB_USER": postgres.user, "DB_SSLMODE": "require",
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server["port"]),
        "SECRET_KEY": PLANTED_KEY,
    }
    env.update(extra)
    return env


def _assert_no_values(text: str, *values: str) -> None:
    for value in values:
        assert value not in text


def test_read_secret_prefers_file_then_env(tmp_path, monkeypatch):
    directory = _secrets_dir(tmp_path, db_password="from-file-value")
    monkeypatch.setenv("CASERA_SECRETS_DIR", str(directory))
    monkeypatch.setenv("DB_PASSWORD", "from-env-value")
    monkeypatch.setenv("SECRET_KEY", "env-only-value")
    monkeypatch.delenv("APNS_KEY", raising=False)
    assert common.read_secret("db_password") == ("from-file-value", "file")
    assert common.read_secret("secret_key") == ("env-only-value", "env")
    assert common.read_secret("apns_key") == (None, "missing")


def test_log_scrubs_a_known_secret_even_if_passed_by_mistake(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CASERA_SECRETS_DIR", str(_secrets_dir(tmp_path, apns_key=PLANTED_APNS)))
    common.read_secret("apns_key")
    common.log("oops", detail=f"token={PLANTED_APNS}")
    out = capsys.readouterr().out
    assert PLANTED_APNS not in out and "********" in out


def test_healthz_and_secret_sources_show_sources_never_values(port, tmp_path, start_app,
                                                             postgres, redis_server):
    env = _api_env(tmp_path, postgres, redis_server)
    api = start_app("api", env, port=port())
    status, body, text = api.get("/healthz")
    assert status == 200 and body["status"] == "ok"
    status, body, text = api.get("/secret-sources")
    assert status == 200
    assert body == {"secrets": {"db_password": "file", "secret_key": "env",
                                "apns_key": "missing"}}
    api.get("/readyz")
    api.request("POST", "/items", {"name": "x"})
    api.stop()
    _assert_no_values(text + api.logs(), postgres.password, PLANTED_KEY)
    assert '"db_password": "file"' in api.logs()  # the startup line says where each came from


def test_readyz_green_through_the_tls_pooler(port, tmp_path, start_app, postgres, redis_server):
    api = start_app("api", _api_env(tmp_path, postgres, redis_server), port=port())
    status, body, _ = api.get("/readyz")
    assert status == 200, body
    assert body["ready"] is True
    assert body["checks"]["postgres"]["ok"] and body["checks"]["postgres"]["tls"] is True
    assert body["checks"]["redis"] == {"ok": True}


def test_sigterm_drains_out_of_the_lb_before_the_api_stops(port, tmp_path, start_app,
                                                          postgres, redis_server):
    api = start_app("api", _api_env(tmp_path, postgres, redis_server, DRAIN_S="2"), port=port())
    assert api.get("/readyz")[0] == 200
    started = time.monotonic()
    api.process.send_signal(signal.SIGTERM)
    # The handler runs on the app's main thread a moment after kill() returns, while requests
    # are served on other threads: wait for its "draining" line rather than race it (CI saw
    # one 200 here in stop 21).
    deadline = time.monotonic() + 5
    while '"draining"' not in api.logs():
        assert time.monotonic() < deadline, "no draining line 5 s after SIGTERM:\n" + api.logs()
        time.sleep(0.02)
    # Draining: not ready for the LB's health check, yet every request is still answered.
    status, body, _ = api.get("/readyz")
    assert status == 503 and body["draining"] is True, body
    assert api.request("POST", "/items", {"name": "during-drain"})[0] == 201
    assert api.get("/healthz")[0] == 200
    assert api.process.wait(15) == 0
    took = time.monotonic() - started
    assert 2 <= took < 10, took
    assert '"draining"' in api.logs() and '"stopping"' in api.logs()


def test_without_drain_s_sigterm_stops_at_once(port, tmp_path, start_app, postgres,
                                               redis_server):
    api = start_app("api", _api_env(tmp_path, postgres, redis_server), port=port())
    started = time.monotonic()
    api.process.send_signal(signal.SIGTERM)
    assert api.process.wait(10) == 0
    assert time.monotonic() - started < 2


def test_readyz_names_what_is_down(port, tmp_path, start_app, postgres, redis_server):
    closed_port = str(port())
    env = _api_env(tmp_path, postgres, redis_server, REDIS_PORT=closed_port)
    (Path(env["CASERA_SECRETS_DIR"]) / "db_password").write_text("wrong-" + postgres.password)
    api = start_app("api", env, port=port())
    status, body, text = api.get("/readyz")
    assert status == 503
    assert body["ready"] is False
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["postgres"]["ok"] is False
    assert "authentication failed" in body["checks"]["postgres"]["error"]  # names the cause...
    api.stop()
    _assert_no_values(text + api.logs(), postgres.password)  # ...never the value


def test_readyz_refuses_plain_text_database(port, tmp_path, start_app, postgres, redis_server):
    api = start_app("api", _api_env(tmp_path, postgres, redis_server, DB_SSLMODE="disable"),
                    port=port())
    status, body, _ = api.get("/readyz")
    assert status == 503 and body["checks"]["postgres"]["ok"] is False


def test_item_is_stored_enqueued_and_processed_once(port, tmp_path, start_app, postgres,
                                                    redis_server, r):
    env = _api_env(tmp_path, postgres, redis_server)
    api = start_app("api", env, port=port())
    created = []
    for n in range(12):  # > 5 runs of one statement: psycopg would prepare it without the fix
        status, body, _ = api.request("POST", "/items", {"name": f"item-{n}"})
        assert status == 201, body
        created.append(body)
    first = created[0]
    assert r.hget(f"asynq:{{default}}:t:{first['task_id']}", "state") == "pending"
    assert r.llen("asynq:{default}:pending") == 12
    assert "default" in r.smembers("asynq:queues")

    worker_env = dict(env, CASERA_POLL_SECONDS="0.1")
    workers = [start_app("worker", worker_env) for _ in range(2)]

    def all_processed() -> bool:
        return all(api.get(f"/items/{item['id']}")[1].get("processed_at") for item in created)

    wait_for("the workers to process 12 items", all_processed, 30, interval=0.3, show=False)
    wait_for("the queue to drain", lambda: r.llen("asynq:{default}:active") == 0, 10,
             interval=0.1, show=False)
    assert r.llen("asynq:{default}:pending") == 0
    assert r.zcard("asynq:{default}:lease") == 0
    assert r.zcard("asynq:{default}:completed") == 12
    assert r.hget(f"asynq:{{default}}:t:{first['task_id']}", "state") == "completed"
    for worker in workers:
        worker.stop()
    done = [json.loads(line) for worker in workers for line in worker.logs().splitlines()
            if '"task_done"' in line]
    assert sorted(d["task_id"] for d in done) == sorted(item["task_id"] for item in created)
    assert all(d["rows_marked"] == 1 for d in done)
    # The counter the Redis runbooks' "exactly once" is read from (issue 11).
    assert [api.get(f"/items/{item['id']}")[1]["process_count"] for item in created] == [1] * 12
    with postgres.connect() as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE processed_at IS NOT NULL"
                            ).fetchone()[0] >= 12
    api.stop()
    _assert_no_values(api.logs() + "".join(w.logs() for w in workers), postgres.password,
                      PLANTED_KEY)


def test_admin_serves_its_page(port, start_app):
    admin = start_app("admin", {}, port=port())
    from urllib.request import ProxyHandler, build_opener

    with build_opener(ProxyHandler({})).open(admin.url("/"), timeout=5) as response:
        assert b"Casera admin" in response.read()


def test_dozzle_demux_of_docker_log_frames():
    framed = (b"\x01\x00\x00\x00\x00\x00\x00\x06hello\n"
              b"\x02\x00\x00\x00\x00\x00\x00\x05oops\n")
    assert dozzle.demux(framed) == "hello\noops\n"
    assert dozzle.demux(b"plain tty output\n") == "plain tty output\n"


@pytest.mark.localcloud
def test_dozzle_lists_containers_and_their_logs_from_the_docker_socket(port, start_app):
    import docker.errors

    from casera_localcloud import engine
    from casera_localcloud.images import IMAGES_BY_NAME, push_ref

    engine.ensure_engine()
    client = engine.client()
    try:
        image = client.images.get(push_ref(IMAGES_BY_NAME["api"]))
    except docker.errors.ImageNotFound:
        pytest.skip("the api image is not built (casera_localcloud.images.up())")
    marker = "hello-from-dozzle-test-" + os.urandom(4).hex()
    container = client.containers.run(image.id, ["python3", "-c", f"print('{marker}')"],
                                      detach=True, labels={"casera.test": "dozzle"})
    try:
        container.wait(timeout=30)
        dozzle_port = port()
        app = start_app("dozzle", {"DOCKER_SOCKET": str(engine.SOCKET),
                                   "DOZZLE_ADDR": f"127.0.0.1:{dozzle_port}"}, port=dozzle_port)
        status, body, _ = app.get("/api/containers")
        assert status == 200
        assert container.id[:12] in {c["id"] for c in body}
        from urllib.request import ProxyHandler, build_opener

        with build_opener(ProxyHandler({})).open(
                app.url(f"/api/logs/{container.id[:12]}?tail=5"), timeout=10) as response:
            assert marker in response.read().decode()
    finally:
        container.remove(force=True)


def test_dozzle_listens_only_where_dozzle_addr_says_and_answers_healthcheck(port, start_app,
                                                                            tmp_path):
    # The stack sets DOZZLE_ADDR=127.0.0.1:9999 so Dozzle is reachable only on its node's
    # loopback; /healthcheck is real Dozzle's path, which verify_stack asks through SSH.
    import socket

    from casera.progress import wait_for

    dozzle_port = port()
    app = start_app("dozzle", {"DOCKER_SOCKET": str(tmp_path / "no-docker.sock"),
                               "DOZZLE_ADDR": f"127.0.0.1:{dozzle_port}"})
    app.port = dozzle_port

    def answer() -> tuple[int, dict] | None:
        try:
            status, body, _ = app.get("/healthcheck")
        except OSError:
            return None
        return status, body

    status, body = wait_for("the dozzle stand-in", answer, 20, interval=0.1, show=False)
    # No Docker socket here: unhealthy, and it says why (the same answer as /healthz).
    assert status == 503 and body["socket"].endswith("no-docker.sock")
    assert app.get("/healthz")[0] == 503
    # Another address of this machine (127.0.0.2 is loopback too) finds nothing listening.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", dozzle_port), timeout=3).close()
