"""B2 key replacement is a rotation: a run that stops between its steps never leaves the app
without B2 access.

Runs after tests/e2e/test_bootstrap.py, on the local cloud it left bootstrapped (this module
never brings the cloud up or down, and leaves it converged for the next test):

    pytest tests/e2e/test_bootstrap.py tests/e2e/test_b2_key_rotation.py

The test removes ``secrets/local.b2-keys.env`` (what a CI machine or a second operator
sees), so the bootstrap must replace every scoped key. The fault is a stopped run: the
bootstrap runbook's own cells, executed in a real kernel by papermill, up to and including the
key step's cell, then a cell that raises, as a crash or a Ctrl-C there would; then a full
``casera run bootstrap`` converges from there.

Throughout, a background probe does what the app does with B2: it reads the B2 credentials
each running api and worker task has mounted (``/run/secrets``, through ``docker exec`` on the
node) and uses them, as the services would, to write, read back and delete a file in the
uploads bucket (api) and read a file in the certs bucket (api, worker). The stand-in api has no
B2 endpoint and the B2 emulator is not reachable from the nodes, so the calls go from this
machine; the credentials are exactly the ones the running tasks hold. A refusal counts as a
failure when the task holding that key was still running when B2 refused it.
"""

from __future__ import annotations

import io
import json
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import pytest
from e2e_harness import casera, run_stopped_after

from casera import b2_keys
from casera.context import RunContext
from casera.operator_secrets import Secret, SecretStore
from casera.params import load_params
from casera.paths import outputs_dir
from casera.providers import b2
from casera.steps import storage
from casera.steps.access import node_addresses
from casera.steps.swarm import docker_clients

pytestmark = [pytest.mark.localcloud, pytest.mark.slow]
APP_SERVICES = ("casera_api", "casera_worker")
PROBE_DIR = ".casera-probe/e2e-rotation"
CERT_PROBE = f"{PROBE_DIR}/cert.pem"
READ_MOUNTED = ("import json, pathlib; d = pathlib.Path('/run/secrets'); print(json.dumps({"
                "p.name: p.read_text().strip() for p in d.iterdir() if p.name.startswith('b2_')"
                "}))")


def latest_run() -> dict[str, Any]:
    path = sorted((outputs_dir("local") / "bootstrap").glob("*.ipynb"))[-1]
    return json.loads(path.read_text())["metadata"]["casera"]


def step(meta: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for s in meta["steps"] if s["step"] == name]
    assert found, f"no step {name!r} in the run: {[s['step'] for s in meta['steps']]}"
    return found[-1]


def local_ctx() -> RunContext:
    """A context for reading the cloud; built directly, as start_run would take the env lock
    that the runs under test need."""
    secrets = SecretStore("local")
    return RunContext(env="local", params=load_params("local", secrets=secrets),
                      secrets=secrets, interactive=False, run_id="e2e-b2-probe",
                      operator="e2e")


def master() -> b2.B2Api:
    return storage.master_api(local_ctx())


def listed_ids() -> set[str]:
    names = {kp.name for kp in load_params("local").b2.keys}
    return {k.key_id for k in b2.list_keys(master()) if k.name in names}


def run_bootstrap_stopped_after(call: str, tmp: Path, run_id: str) -> None:
    """The bootstrap stopped right after the step that ``call`` makes, journalling its steps
    as ``casera run`` does (the converging run reads what it finds, not the journal)."""
    run_stopped_after("bootstrap", call, tmp, {"dry_run": False, "approve": False,
                                               "run_id": run_id, "overrides": {}},
                      tmp / f"stopped-{run_id}.jsonl")


def _docker_time(text: str) -> datetime:
    """Docker's RFC 3339 times carry nanoseconds; datetime takes microseconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


class B2Traffic(threading.Thread):
    """The app's B2 traffic, with the credentials its running tasks hold, every ~2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.ctx = local_ctx()
        buckets = self.ctx.params.b2.buckets
        self.uploads, self.certs = buckets["uploads"].name, buckets["certs"].name
        self.phase = "start"
        self.rounds: dict[str, int] = {}
        self.seen: dict[str, set[str]] = {}  # phase -> key ids the running tasks mounted
        self.last_round: set[str] = set()
        self.failures: list[str] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with ExitStack() as stack:
            clients = docker_clients(self.ctx, stack, node_addresses(self.ctx))
            n = 0
            while not self.stopping.is_set():
                phase = self.phase
                try:
                    held = self._round(clients, n)
                    self.rounds[phase] = self.rounds.get(phase, 0) + 1
                    self.seen.setdefault(phase, set()).update(held)
                    self.last_round = held
                except Exception as exc:  # noqa: BLE001 - the probe's own trouble, kept apart
                    self.errors.append(f"{phase}: {type(exc).__name__}: {str(exc)[:200]}")
                n += 1
                self.stopping.wait(2)

    def _round(self, clients: dict[str, docker.DockerClient], n: int) -> set[str]:
        creds: dict[tuple[str, str], list[Any]] = {}  # (role, key id) -> containers
        secrets: dict[tuple[str, str], str] = {}
        for client in clients.values():
            for container in client.containers.list(
                    filters={"label": "com.docker.stack.namespace=casera"}):
                if container.labels.get("com.docker.swarm.service.name") not in APP_SERVICES:
                    continue
                try:
                    code, out = container.exec_run(["python3", "-c", READ_MOUNTED])
                except docker.errors.APIError:
                    continue  # stopped between the listing and the exec: it serves nothing
                if code != 0:
                    continue
                mounted = json.loads(out)
                for role in ("uploads", "certs"):
                    key_id = mounted.get(f"b2_{role}_key_id")
                    if key_id:
                        creds.setdefault((role, key_id), []).append(container)
                        secrets[(role, key_id)] = mounted.get(f"b2_{role}_key", "")
        if not creds:
            raise RuntimeError("no running api or worker task holds B2 credentials")
        for (role, key_id), containers in creds.items():
            asked = datetime.now(UTC)
            error = self._use(role, key_id, Secret(f"b2 {role} key", secrets[(role, key_id)]), n)
            if error is None:
                continue
            serving = [c.labels.get("com.docker.swarm.task.name", c.name) for c in containers
                       if self._ran_at(c, asked)]
            if serving:
                self.failures.append(f"{self.phase}: {role} key {key_id} refused while "
                                     f"{', '.join(serving)} ran with it: {error[:200]}")
        return {key_id for _, key_id in creds}

    def _use(self, role: str, key_id: str, secret: Secret, n: int) -> str | None:
        """What the service does with this key; None when it all worked, else the error."""
        try:
            api = b2.authorize(self.ctx.params.b2.realm, key_id, secret)
            if role == "certs":
                got = io.BytesIO()
                api.get_bucket_by_name(self.certs).download_file_by_name(CERT_PROBE).save(got)
                return None if got.getvalue().startswith(b"-----BEGIN") else "certs read wrong"
            bucket = api.get_bucket_by_name(self.uploads)
            name = f"{PROBE_DIR}/upload-{n}-{key_id[-6:]}"
            body = f"written with {key_id} in round {n}".encode()
            version = bucket.upload_bytes(body, name)
            got = io.BytesIO()
            bucket.download_file_by_name(name).save(got)
            api.delete_file_version(version.id_, name)
            return None if got.getvalue() == body else "read back something else"
        except Exception as exc:  # noqa: BLE001 - any refusal is what the app would see
            return f"{type(exc).__name__}: {exc}"

    @staticmethod
    def _ran_at(container: Any, when: datetime) -> bool:
        try:
            container.reload()
        except docker.errors.NotFound:
            return False  # removed: it had stopped before; nothing served with it
        if container.status == "running":
            return True
        finished = container.attrs["State"].get("FinishedAt") or ""
        return not finished.startswith("0001") and _docker_time(finished) >= when

    def enter(self, phase: str, rounds: int = 2, timeout: float = 120) -> None:
        """Switch to ``phase`` and wait until the probe has done ``rounds`` rounds in it."""
        self.phase = phase
        deadline = time.monotonic() + timeout
        while self.rounds.get(phase, 0) < rounds:
            assert self.is_alive(), f"the B2 probe stopped: {self.errors[-3:]}"
            assert time.monotonic() < deadline, \
                f"the B2 probe did no round in {phase!r} within {timeout:.0f} s: {self.errors[-3:]}"
            time.sleep(1)

    def assert_never_refused(self) -> None:
        assert not self.failures, "the app lost B2 access:\n" + "\n".join(self.failures)


@pytest.fixture(scope="module")
def traffic() -> Any:
    ctx = local_ctx()
    store = b2_keys.key_store("local")
    if not store.path.exists() or not node_addresses(ctx):
        pytest.fail("needs the local cloud as tests/e2e/test_bootstrap.py leaves it: run "
                    "pytest tests/e2e/test_bootstrap.py tests/e2e/test_b2_key_rotation.py")
    api = master()
    certs = b2.get_bucket(api, ctx.params.b2.buckets["certs"].name)
    assert certs, "no certs bucket: the bootstrap did not run"
    api.BUCKET_CLASS(api, certs.bucket_id, name=certs.name).upload_bytes(
        b"-----BEGIN CERTIFICATE-----\ne2e probe\n-----END CERTIFICATE-----\n", CERT_PROBE)
    probe = B2Traffic()
    probe.start()
    probe.enter("before")
    yield probe
    probe.stopping.set()
    probe.join(30)
    b2.delete_file(api, certs.bucket_id, certs.name, CERT_PROBE)
    probe.assert_never_refused()


def lose_the_key_store() -> dict[str, tuple[str, Secret]]:
    """What a CI machine sees: no key store. Returns what was in it (the keys in use)."""
    store = b2_keys.key_store("local")
    old = store.load()
    assert set(old) == {kp.name for kp in load_params("local").b2.keys}
    assert listed_ids() == {key_id for key_id, _ in old.values()}, "not converged before"
    store.path.unlink()
    return old


def app_ids(keys: dict[str, str]) -> set[str]:
    """Of ``name -> key id``, the ids of the keys the api and worker mount: what the probe
    sees (the Redis backup job's key is not theirs)."""
    names = {kp.name for kp in load_params("local").b2.keys
             if {"api", "worker"} & set(kp.for_services)}
    return {key_id for name, key_id in keys.items() if name in names}


def assert_rotated(traffic: B2Traffic, old: dict[str, tuple[str, Secret]]) -> None:
    """Old keys gone from B2 and refused; only the new keys mounted; the store has no
    retiring entries; and the app never lost access."""
    ctx = local_ctx()
    new = storage.app_key_values(ctx)
    old_ids = {key_id for key_id, _ in old.values()}
    assert not old_ids & {k.key_id for k in new.values()}
    assert listed_ids() == {k.key_id for k in new.values()}
    assert b2_keys.key_store("local").retiring() == {}
    for name, (key_id, secret) in old.items():
        try:
            b2.authorize(ctx.params.b2.realm, key_id, secret)
        except Exception:  # noqa: BLE001 - b2sdk's refusal, whatever its class
            continue
        pytest.fail(f"{name}: the replaced key {key_id} still authorizes")
    traffic.enter(f"after rotation {sorted(old_ids)}", rounds=2)
    assert traffic.last_round == app_ids({n: k.key_id for n, k in new.items()}), \
        "a task holds an old key"
    traffic.assert_never_refused()


def test_a_run_stopped_after_the_key_step_then_the_converging_run_keep_b2(
        traffic: B2Traffic, tmp_path: Path) -> None:
    # The dangerous moment of a lost key store: new keys made and stored, the old ones only
    # recorded, nothing rolled yet. The run after that stop must take the stored keys (make no
    # third set), roll the services onto them and delete the old keys only once nothing
    # mounts them. (A stop after the stack step is the rotation e2e's stopped run, through the
    # same storage.retire_replaced_keys: tests/e2e/test_secret_rotation.py.)
    old = lose_the_key_store()
    old_ids = {key_id for key_id, _ in old.values()}
    traffic.phase = "run stopped after the key step"
    run_bootstrap_stopped_after("steps.storage.ensure_app_keys(", tmp_path, "e2e-stop-keys")
    traffic.enter("stopped after the key step", rounds=2)
    # New keys made and stored, the old ones only recorded: still in B2, still working,
    # still what every running task mounts.
    store = b2_keys.key_store("local")
    assert sorted(i for ids in store.retiring().values() for i in ids) == sorted(old_ids)
    assert old_ids < listed_ids()
    assert traffic.seen["stopped after the key step"] == app_ids(
        {name: key_id for name, (key_id, _) in old.items()})
    traffic.assert_never_refused()

    traffic.phase = "converging run"
    done = casera("run", "bootstrap", "--env", "local")
    assert done.returncode == 0, done.stderr[-2000:]
    meta = latest_run()
    assert step(meta, "b2 keys")["changed"] == 0  # made and stored by the stopped run
    # id and secret of each scoped key (api uploads, certs read, Redis backup, pg_dump)
    assert step(meta, "docker secrets")["changed"] == 2 * len(load_params("local").b2.keys)
    retired = step(meta, "b2 old keys")
    assert retired["changed"] == len(old_ids), retired
    assert_rotated(traffic, old)
