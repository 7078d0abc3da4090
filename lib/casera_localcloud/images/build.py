"""Builds the stand-in images from Debian packages and pushes them to the local registry.

No image can be pulled here, so: debootstrap a minimal root (cached as a tarball under
``local_cloud_home()/images/rootfs``), ``docker import`` it on the local engine, build a small
Dockerfile FROM it, push ``127.0.0.1:5000/casera/<name>:<tag>``. An image whose tag is already
in the registry is left alone, which is what makes a second ``up()`` rebuild nothing.
"""

from __future__ import annotations

import fcntl
import io
import json
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from casera.errors import CaseraError
from casera.paths import local_cloud_home
from casera_localcloud import debian, registry
from casera_localcloud.images.recipes import (
    IMAGES,
    MIRROR,
    PRUNE_DIRS,
    SUITE,
    BaseRecipe,
    ImageRecipe,
)

REPOSITORY_PREFIX = "casera"
DEBOOTSTRAP_TIMEOUT = 900


class ImageBuildError(CaseraError):
    """Building, importing or pushing an image failed; the message names the step and image."""


@dataclass(frozen=True)
class ImageResult:
    name: str
    ref: str
    action: str  # "unchanged" (already in the registry) or "built and pushed"
    seconds: float
    pushed_bytes: int  # compressed size a node downloads (all layers, the shared base included)

    def line(self) -> str:
        return (f"image {self.name}: {self.action} {self.ref} "
                f"({self.pushed_bytes / 1e6:.1f} MB compressed, {self.seconds:.1f} s)")


def images_home() -> Path:
    return local_cloud_home() / "images"


def repository(name: str) -> str:
    return f"{REPOSITORY_PREFIX}/{name}"


def push_ref(recipe: ImageRecipe) -> str:
    """Where the local engine pushes the image."""
    return f"{registry.PUSH_HOST}/{repository(recipe.name)}:{recipe.tag()}"


def node_ref(recipe: ImageRecipe) -> str:
    """The same image as the nodes pull it (same registry, reached through the bridge)."""
    return f"{registry.NODE_HOST}/{repository(recipe.name)}:{recipe.tag()}"


def node_refs() -> dict[str, str]:
    """Image references for the local stack file, from the recipes alone (no engine needed)."""
    return {recipe.name: node_ref(recipe) for recipe in IMAGES}


@contextmanager
def _build_lock() -> Iterator[None]:
    # Two `casera local up` at once would debootstrap into the same directory.
    images_home().mkdir(parents=True, exist_ok=True)
    with open(images_home() / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rootfs_tarball(base: BaseRecipe) -> Path:
    return images_home() / "rootfs" / f"{base.name}-{base.digest()}.tar"


def _prune(root: Path) -> None:
    for relative in PRUNE_DIRS:
        directory = root / relative
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if relative == "usr/share/doc" and entry.is_dir() and not entry.is_symlink():
                for item in entry.iterdir():
                    if item.name != "copyright":
                        _remove(item)
            else:
                _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def ensure_rootfs(base: BaseRecipe) -> tuple[Path, str]:
    """The base's root filesystem tarball, made with debootstrap unless cached."""
    tarball = rootfs_tarball(base)
    if tarball.exists():
        return tarball, f"rootfs {base.name}: cached {tarball.name}"
    debian.ensure_command("debootstrap", "debootstrap")
    started = time.monotonic()
    work = images_home() / "work" / f"{base.name}-{base.digest()}"
    if work.exists():  # left by an interrupted run; debootstrap refuses a half-made target
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log = images_home() / f"debootstrap-{base.name}.log"
    with open(log, "wb") as out:
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", "--components=main",
             f"--include={','.join(base.packages)}", SUITE, str(work), MIRROR],
            stdout=out, stderr=subprocess.STDOUT, timeout=DEBOOTSTRAP_TIMEOUT, check=False,
        )
    if result.returncode != 0:
        raise ImageBuildError(f"debootstrap of {base.name} failed ({result.returncode}); "
                              f"see {log}")
    for command in base.chroot_commands:
        done = subprocess.run(["chroot", str(work), *command], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise ImageBuildError(f"{base.name}: `{' '.join(command)}` in the new root failed: "
                                  f"{done.stderr.strip()}")
    _prune(work)
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial")
    subprocess.run(["tar", "--numeric-owner", "-C", str(work), "-cf", str(partial), "."],
                   check=True)
    partial.replace(tarball)
    shutil.rmtree(work)
    for stale in tarball.parent.glob(f"{base.name}-*.tar"):
        if stale != tarball:  # an older recipe of this base: nothing will import it again
            stale.unlink()
    return tarball, (f"rootfs {base.name}: debootstrapped {tarball.name} "
                     f"({tarball.stat().st_size / 1e6:.0f} MB, "
                     f"{time.monotonic() - started:.0f} s)")


def base_ref(base: BaseRecipe) -> str:
    return f"{repository(base.name)}:{base.digest()}"


def ensure_base_image(client: docker.DockerClient, base: BaseRecipe) -> str:
    """The base imported on the local engine (not pushed: the service images carry it)."""
    ref = base_ref(base)
    try:
        client.images.get(ref)
        return f"base {ref}: present"
    except docker.errors.ImageNotFound:
        pass
    tarball, _ = ensure_rootfs(base)
    client.api.import_image_from_file(str(tarball), repository=repository(base.name),
                                      tag=base.digest())
    client.images.get(ref)  # raises if the import did not produce it
    return f"base {ref}: imported"


def _build_context(recipe: ImageRecipe) -> io.BytesIO:
    dockerfile = recipe.dockerfile.format(base=base_ref(recipe.base)).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in [("Dockerfile", dockerfile),
                           *((f"standin/{n}", d) for n, d in recipe.file_bytes().items())]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _push(client: docker.DockerClient, recipe: ImageRecipe) -> None:
    name, tag = push_ref(recipe).rsplit(":", 1)
    for event in client.api.push(name, tag=tag, stream=True, decode=True):
        if "error" in event:
            raise ImageBuildError(f"push of {push_ref(recipe)} failed: {event['error']}")


def pushed_size(recipe: ImageRecipe) -> int:
    """Bytes a node downloads for this image: config plus every compressed layer."""
    request = urllib.request.Request(
        f"http://{registry.PUSH_HOST}/v2/{repository(recipe.name)}/manifests/{recipe.tag()}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        manifest = json.load(response)
    return int(manifest["config"]["size"]) + sum(int(layer["size"])
                                                 for layer in manifest["layers"])


ALIAS = "local"
_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def ensure_alias(recipe: ImageRecipe, alias: str = ALIAS) -> bool:
    """Point ``<repo>:local`` (what params/local.yaml names) at the content tag, through the
    registry API. ``docker stack deploy`` resolves tags to digests, so a moved alias still
    rolls the services. Returns True when it moved."""
    base = f"http://{registry.PUSH_HOST}/v2/{repository(recipe.name)}/manifests"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def fetch(tag: str) -> bytes | None:
        request = urllib.request.Request(f"{base}/{tag}", headers={"Accept": _MANIFEST_V2})
        try:
            with opener.open(request, timeout=10) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    manifest = fetch(recipe.tag())
    if manifest is None or fetch(alias) == manifest:
        return False
    request = urllib.request.Request(f"{base}/{alias}", data=manifest, method="PUT",
                                     headers={"Content-Type": _MANIFEST_V2})
    with opener.open(request, timeout=10):
        return True


def ensure_image(client: docker.DockerClient, recipe: ImageRecipe) -> ImageResult:
    started = time.monotonic()
    tag = recipe.tag()
    if tag in registry.tags(repository(recipe.name)):
        return ImageResult(recipe.name, push_ref(recipe), "unchanged", 0.0, pushed_size(recipe))
    ensure_base_image(client, recipe.base)
    try:
        client.images.build(
            fileobj=_build_context(recipe), custom_context=True, tag=push_ref(recipe),
            rm=True, forcerm=True, pull=False,
            labels={"org.casera.image": recipe.name, "org.casera.recipe-tag": tag},
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)
        raise ImageBuildError(f"build of {recipe.name} failed: {exc}\n{log[-2000:]}") from exc
    _push(client, recipe)
    return ImageResult(recipe.name, push_ref(recipe), "built and pushed",
                       time.monotonic() - started, pushed_size(recipe))


def build_all(client: docker.DockerClient) -> tuple[list[str], list[ImageResult]]:
    """Make every image that is not in the registry yet. Returns (base lines, image results)."""
    with _build_lock():
        missing = [r for r in IMAGES if r.tag() not in registry.tags(repository(r.name))]
        bases = {r.base.name: r.base for r in missing}
        if any(not rootfs_tarball(base).exists() for base in bases.values()):
            # Once, before the threads: two apt-get runs would collide.
            debian.ensure_command("debootstrap", "debootstrap")
        # The roots are independent and debootstrap spends most of its time downloading.
        with ThreadPoolExecutor(max_workers=max(1, len(bases))) as pool:
            base_lines = [line for _, line in pool.map(ensure_rootfs, bases.values())]
        results = [ensure_image(client, recipe) for recipe in IMAGES]
        for recipe in IMAGES:
            if ensure_alias(recipe):
                base_lines.append(f"{repository(recipe.name)}:{ALIAS} -> {recipe.tag()}")
    return base_lines, results
