"""The node image, built from Debian packages because no container registry is reachable.

Two stages, each cached by a content hash of its recipe so a second build is a no-op:
1. a root filesystem from ``debootstrap --variant=minbase`` (about a minute), kept as a tarball
   under ``local_cloud_home()/nodes/`` so a wiped engine re-imports it in seconds;
2. ``docker import`` of that tarball, then a Dockerfile without RUN steps (files only) that
   turns it into a node: entrypoint, daemon.json, cloud-init config.
Where a registry is reachable a plain ``FROM debian:bookworm`` would do; this path never
needs one.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import docker.errors

from casera.errors import CaseraError
from casera.paths import local_cloud_home
from casera_localcloud import debian, engine

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
# What a Hetzner docker-ce server offers where the runbooks look, plus what the node's boot
# needs (tini as PID 1, cloud-init) and busybox-static for a tiny in-node test/tool image.
PACKAGES = (
    "docker.io", "containerd", "runc", "tini", "openssh-server", "openssh-client", "iproute2",
    "iptables", "ca-certificates", "cloud-init", "python3", "procps", "curl", "sudo",
    "iputils-ping", "netcat-openbsd", "busybox-static", "less",
    # debootstrap does not resolve virtual packages: python3-cryptography (for cloud-init)
    # needs python3-cffi-backend-api-*, which only this package provides.
    "python3-cffi-backend",
)
# Bumped when the post-debootstrap clean-up below changes what the tarball holds.
ROOTFS_STEPS_VERSION = "1"
BASE_REPO = "casera-node-base"
IMAGE_REPO = "casera-node"
FILES = ("Dockerfile", "entrypoint.sh", "casera-service.sh", "systemctl.sh", "service.sh",
         "daemon.json", "cloud-casera.yaml", "sshd-hostkeys.conf", "power.sh")
LABEL = "casera.localcloud.part"
_thread_lock = threading.Lock()


@dataclass(frozen=True)
class BuildResult:
    image: str
    rootfs: Path
    built_rootfs: bool
    imported: bool
    built_image: bool
    seconds: float

    def describe(self) -> str:
        done = [w for w, flag in (("debootstrapped the root filesystem", self.built_rootfs),
                                  ("imported it", self.imported),
                                  ("built the node image", self.built_image)) if flag]
        what = ", ".join(done) if done else "cached, nothing to do"
        return f"node image {self.image}: {what} ({self.seconds:.1f} s)"


def home() -> Path:
    return local_cloud_home() / "nodes"


def _file_bytes(name: str) -> bytes:
    return resources.files("casera_localcloud.nodes").joinpath("files", name).read_bytes()


def rootfs_hash() -> str:
    recipe = "\n".join([SUITE, MIRROR, VARIANT, ROOTFS_STEPS_VERSION, *sorted(PACKAGES)])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def image_hash() -> str:
    digest = hashlib.sha256(rootfs_hash().encode())
    for name in FILES:
        digest.update(name.encode() + b"\0" + _file_bytes(name))
    return digest.hexdigest()[:16]


def base_tag() -> str:
    return f"{BASE_REPO}:{rootfs_hash()}"


def image_tag() -> str:
    return f"{IMAGE_REPO}:{image_hash()}"


def rootfs_tarball() -> Path:
    return home() / f"rootfs-{rootfs_hash()}.tar"


def _have_image(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise CaseraError(f"{what} failed (exit {result.returncode}):\n{tail}")


def build_rootfs() -> Path:
    """debootstrap the node's root filesystem into the cached tarball (skipped when present)."""
    tarball = rootfs_tarball()
    if tarball.exists():
        return tarball
    debian.ensure_command("debootstrap", "debootstrap")
    home().mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="rootfs-", dir=home()))
    root = workdir / "root"
    try:
        try:
            _run(["debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
                  SUITE, str(root), MIRROR], f"debootstrap {SUITE} from {MIRROR}")
        except CaseraError as exc:
            kept = home() / "debootstrap-failed.log"
            log = root / "debootstrap/debootstrap.log"
            if log.exists():
                shutil.copy(log, kept)
            raise CaseraError(f"{exc}\nfull log: {kept}") from None
        _clean_rootfs(root)
        partial = tarball.with_suffix(".tar.partial")
        # numeric owners: the tar is read by docker import, not by this host's user database.
        _run(["tar", "--numeric-owner", "--xattrs", "--exclude=./proc/*", "--exclude=./sys/*",
              "-C", str(root), "-cf", str(partial), "."],
             "packing the root filesystem")
        partial.replace(tarball)
    finally:
        _unmount_below(root)
        shutil.rmtree(workdir, ignore_errors=True)
    for old in home().glob("rootfs-*.tar"):
        if old != tarball:
            old.unlink()
    return tarball


def _unmount_below(root: Path) -> None:
    """A failed debootstrap can leave /proc or /sys mounted in the target; removing the tree
    through those mounts would reach into the host's."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def _clean_rootfs(root: Path) -> None:
    # Host keys made during the install would be shared by every node; the entrypoint makes
    # each node its own. Package caches only make the image bigger.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/sources.list").write_text(f"deb {MIRROR} {SUITE} main\n")
    (root / "etc/casera").mkdir(exist_ok=True)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    # debootstrap leaves the build host's name and resolver; docker provides both per node.
    (root / "etc/hostname").write_text("localhost\n")


def _import_base(client: docker.DockerClient, tarball: Path) -> None:
    # The SDK's import_image would read the whole tarball into memory; the CLI streams it.
    with tarball.open("rb") as data:
        result = subprocess.run(
            ["docker", "-H", engine.DOCKER_HOST, "import",
             "--message", f"casera node root filesystem {rootfs_hash()}", "-", base_tag()],
            stdin=data, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CaseraError(f"docker import of {tarball} failed: {result.stderr.strip()}")


def _build_context() -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in FILES:
            data = _file_bytes(name)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


@contextmanager
def build_lock() -> Iterator[None]:
    """One builder at a time, across threads and processes: the emulator creates three
    servers at once, and three parallel debootstraps of the same recipe help nobody."""
    home().mkdir(parents=True, exist_ok=True)
    with _thread_lock, open(home() / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_image(client: docker.DockerClient | None = None) -> BuildResult:
    """Make sure the node image for the current recipe exists; build only what is missing."""
    started = time.monotonic()
    client = client or engine.client(timeout=600)
    tag = image_tag()
    if _have_image(client, tag):  # the common case needs no lock
        return BuildResult(tag, rootfs_tarball(), False, False, False,
                           time.monotonic() - started)
    with build_lock():
        return _build_missing(client, tag, started)


def _build_missing(client: docker.DockerClient, tag: str, started: float) -> BuildResult:
    built_rootfs = imported = built_image = False
    if not _have_image(client, tag):
        if not _have_image(client, base_tag()):
            built_rootfs = not rootfs_tarball().exists()
            tarball = build_rootfs()
            _import_base(client, tarball)
            imported = True
        try:
            client.images.build(
                fileobj=_build_context(), custom_context=True, tag=tag, rm=True,
                buildargs={"BASE": base_tag()}, labels={LABEL: "nodes"}, network_mode="none")
        except docker.errors.BuildError as exc:
            log = "".join(str(chunk.get("stream", "")) for chunk in exc.build_log)
            raise CaseraError(f"building {tag} failed: {exc}\n{log[-2000:]}") from exc
        built_image = True
    return BuildResult(tag, rootfs_tarball(), built_rootfs, imported, built_image,
                       time.monotonic() - started)


def remove_images(client: docker.DockerClient) -> list[str]:
    """Remove node images of older recipes (about 1 GB each); the current one stays, it is
    the cache, and so does any image a node still runs on."""
    removed = []
    keep = {image_tag(), base_tag()}
    for image in client.images.list():
        for tag in image.tags:
            repo = tag.rsplit(":", 1)[0]
            if repo in (IMAGE_REPO, BASE_REPO) and tag not in keep:
                try:
                    client.images.remove(tag)
                except docker.errors.APIError:  # in use by a node made before the change
                    continue
                removed.append(tag)
    return removed
