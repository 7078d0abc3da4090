"""Image tags follow their content; on the local engine the images build from Debian packages,
land in the registry, stay small, run as non-root, and a second up() rebuilds nothing."""

from __future__ import annotations

import ast
import dataclasses
import time

import pytest

from casera_localcloud.images import recipes
from casera_localcloud.images.recipes import IMAGES_BY_NAME, PYTHON_BASE

# What a node downloads per image (compressed, shared base included). The python images
# share one base layer, so a node pays for it once.
MAX_PUSHED_MB = {"redis": 45, "api": 60, "worker": 60, "admin": 60, "dozzle": 60,
                 # backup: 66.7 MB measured (python3, b2sdk, redis-tools, and since the
                 # nightly pg_dump postgresql-client-15, which pulls in perl: ~47 MB unpacked)
                 "backup": 75}


def test_tag_changes_with_app_source_and_only_for_images_that_copy_it(monkeypatch):
    before = {name: recipe.tag() for name, recipe in IMAGES_BY_NAME.items()}
    original = recipes.ImageRecipe.file_bytes

    def edited(self: recipes.ImageRecipe) -> dict[str, bytes]:
        files = original(self)
        if "worker.py" in files:
            files["worker.py"] += b"\n# changed\n"
        return files

    monkeypatch.setattr(recipes.ImageRecipe, "file_bytes", edited)
    after = {name: recipe.tag() for name, recipe in IMAGES_BY_NAME.items()}
    assert [name for name in before if before[name] != after[name]] == ["worker"]


def test_a_base_change_retags_every_image_on_it():
    changed_base = dataclasses.replace(PYTHON_BASE, packages=(*PYTHON_BASE.packages, "curl"))
    api = IMAGES_BY_NAME["api"]
    assert dataclasses.replace(api, base=changed_base).tag() != api.tag()
    assert IMAGES_BY_NAME["redis"].base is not PYTHON_BASE


def test_tags_are_stable():
    assert {r.tag() for r in IMAGES_BY_NAME.values()} == {r.tag() for r in
                                                          IMAGES_BY_NAME.values()}
    assert all(len(r.tag()) == 12 for r in IMAGES_BY_NAME.values())


def _relative_imports(source: bytes) -> set[str]:
    """The sibling modules a stand-in app imports (``from . import x``, ``from .x import y``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {f"{node.module}.py"} if node.module else {
                f"{alias.name}.py" for alias in node.names}
    return found


@pytest.mark.parametrize("name", sorted(IMAGES_BY_NAME))
def test_an_image_copies_every_module_its_app_imports(name: str) -> None:
    """A module the recipe leaves out fails only inside the image, as an ImportError at the
    task's start: the stack then never converges (a rehearsal saw the api at 0/3 for 300 s
    when uploads.py was new). The tag hashes the listed files only, so the cache hides it."""
    recipe = IMAGES_BY_NAME[name]
    files = recipe.file_bytes()
    imported = set().union(*(_relative_imports(data) for f, data in files.items()
                             if f.endswith(".py")), set())
    assert imported <= set(files), f"{name}: add {sorted(imported - set(files))} to its recipe"


@pytest.fixture(scope="module")
def built() -> dict[str, object]:
    from casera_localcloud import images

    started = time.monotonic()
    first = images.up()
    first_seconds = time.monotonic() - started
    started = time.monotonic()
    second = images.up()
    return {"first": first, "first_seconds": first_seconds, "second": second,
            "second_seconds": time.monotonic() - started}


@pytest.mark.localcloud
def test_second_up_rebuilds_nothing(built):
    print("\n".join(built["first"]), f"\nfirst up: {built['first_seconds']:.1f} s")
    print("\n".join(built["second"]), f"\nsecond up: {built['second_seconds']:.1f} s")
    image_lines = [line for line in built["second"] if line.startswith("image ")]
    assert len(image_lines) == len(IMAGES_BY_NAME)
    assert all(": unchanged " in line for line in image_lines), image_lines
    assert not [line for line in built["second"] if line.startswith("rootfs ")]
    assert built["second_seconds"] < 15


@pytest.mark.localcloud
def test_images_are_in_the_registry_and_small(built):
    from casera_localcloud import registry
    from casera_localcloud.images import pushed_size

    for name, recipe in IMAGES_BY_NAME.items():
        assert recipe.tag() in registry.tags(f"casera/{name}")
        size_mb = pushed_size(recipe) / 1e6
        print(f"{name}: {size_mb:.1f} MB compressed")
        assert size_mb < MAX_PUSHED_MB[name], name


@pytest.mark.localcloud
def test_images_run_as_non_root(built):
    from casera_localcloud import engine
    from casera_localcloud.images import push_ref

    client = engine.client()
    for name, recipe in IMAGES_BY_NAME.items():
        out = client.containers.run(push_ref(recipe), entrypoint=["id", "-u"], remove=True)
        assert out.decode().strip() not in ("", "0"), name


@pytest.mark.localcloud
def test_redis_image_keeps_aof_on_and_loads_a_restored_snapshot(built):
    """The failover runbook restores a lone dump.rdb; Redis with AOF on would ignore it."""
    from casera.progress import wait_for
    from casera_localcloud import engine
    from casera_localcloud.images import push_ref

    client = engine.client()
    ref = push_ref(IMAGES_BY_NAME["redis"])
    volume = client.volumes.create(f"casera-test-redis-{time.time_ns()}")
    containers = []

    def start(*args: str) -> object:
        container = client.containers.run(ref, ["redis-server", *args], detach=True,
                                          volumes={volume.name: {"bind": "/data"}})
        containers.append(container)
        wait_for("redis in its container", lambda: container.exec_run(
            ["redis-cli", "ping"]).output.strip() == b"PONG", 30, interval=0.3, show=False)
        return container

    def cli(container: object, *args: str) -> str:
        return container.exec_run(["redis-cli", *args]).output.decode().strip()

    try:
        first = start("--appendonly", "no")  # leaves only dump.rdb, as a restore does
        cli(first, "set", "drill", "kept")
        cli(first, "save")
        first.stop(timeout=10)
        second = start("--appendonly", "yes", "--appendfsync", "everysec")  # the stack's args
        wait_for("AOF to be switched on", lambda: cli(second, "config", "get", "appendonly")
                 .split() == ["appendonly", "yes"], 30, interval=0.3, show=False)
        assert cli(second, "get", "drill") == "kept"
        assert cli(second, "config", "get", "appendfsync").split()[1] == "everysec"
        listing = second.exec_run(["ls", "/data"]).output.decode().split()
        assert "appendonlydir" in listing
        assert second.exec_run(["id", "-un"]).output.decode().strip() == "redis"
    finally:
        for container in containers:
            container.remove(force=True)
        volume.remove(force=True)
