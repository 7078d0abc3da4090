"""What each image is made of. A tag is a hash of everything listed here (base packages,
root filesystem steps, Dockerfile, copied files), so an unchanged recipe is never rebuilt and
any change gives a new tag that nodes pull as a new version.

Service images stay small because every node pulls them: two minimal Debian roots (debootstrap
minbase plus only what runs on them) and Dockerfiles that only COPY on top, so the four Python
images share one base layer and a node downloads it once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
APPS_DIR = Path(__file__).with_name("apps")

# Fixed ids so the stack file's `user:` and volume ownership match without looking them up.
APP_UID = 10001
APP_USER = "casera"

# Emptied in every root after debootstrap: nothing reads them at run time (the .debs alone are
# a third of a minbase root). /usr/share/doc keeps each package's copyright file, which
# Debian's licences ask to ship along.
PRUNE_DIRS = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "var/log",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/doc",
)


@dataclass(frozen=True)
class BaseRecipe:
    """A root filesystem: debootstrap minbase + packages, then commands run in a chroot."""

    name: str
    packages: tuple[str, ...]
    chroot_commands: tuple[tuple[str, ...], ...] = ()

    def digest(self) -> str:
        spec = {"suite": SUITE, "variant": "minbase", "packages": sorted(self.packages),
                "chroot": self.chroot_commands, "prune": PRUNE_DIRS}
        return _short_hash(json.dumps(spec, sort_keys=True).encode())


@dataclass(frozen=True)
class ImageRecipe:
    """A service image: a Dockerfile FROM a base, with app files copied into /opt/casera."""

    name: str
    base: BaseRecipe
    dockerfile: str
    files: tuple[str, ...] = field(default=())

    def file_bytes(self) -> dict[str, bytes]:
        return {name: (APPS_DIR / name).read_bytes() for name in self.files}

    def tag(self) -> str:
        h = hashlib.sha256()
        h.update(self.base.digest().encode())
        h.update(self.dockerfile.encode())
        for name, data in sorted(self.file_bytes().items()):
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()[:12]


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


PYTHON_BASE = BaseRecipe(
    name="base-python",
    packages=("python3", "python3-psycopg", "python3-redis"),
    chroot_commands=(
        ("useradd", "--system", "--uid", str(APP_UID), "--user-group", "--no-create-home",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", APP_USER),
    ),
)

REDIS_BASE = BaseRecipe(
    name="base-redis",
    packages=("redis-server",),
    chroot_commands=(
        ("mkdir", "-p", "/data"),
        ("chown", "redis:redis", "/data"),
    ),
)

# The backup jobs: redis-cli for `--rdb`, pg_dump (postgresql-client-15, the local Neon's
# major version: pg_dump refuses a newer server) for the nightly dump, b2sdk (Debian's 1.17)
# for the uploads. Its own root, so these packages do not rebuild the four app images'
# shared base.
BACKUP_BASE = BaseRecipe(
    name="base-backup",
    packages=("python3", "python3-redis", "python3-b2sdk", "redis-tools",
              "postgresql-client-15"),
    chroot_commands=PYTHON_BASE.chroot_commands,
)

_PY_COMMON = ("__init__.py", "common.py", "healthcheck.py")


def _python_dockerfile(module: str, port: int | None) -> str:
    expose = f"EXPOSE {port}\n" if port else ""
    # -u: unbuffered, so `docker logs` (and Dozzle) see each line as it happens.
    return (
        "FROM {base}\n"
        "COPY standin/ /opt/casera/standin/\n"
        "ENV PYTHONPATH=/opt/casera PYTHONDONTWRITEBYTECODE=1 "
        f"CASERA_APP={module}\n"
        f"{expose}"
        f"USER {APP_UID}:{APP_UID}\n"
        f'CMD ["python3", "-u", "-m", "standin.{module}"]\n'
    )


IMAGES: tuple[ImageRecipe, ...] = (
    ImageRecipe(
        name="redis",
        base=REDIS_BASE,
        dockerfile=(
            "FROM {base}\n"
            "COPY standin/redis.conf /etc/redis/casera.conf\n"
            "COPY standin/redis-entrypoint.sh /usr/local/bin/casera-redis\n"
            "VOLUME /data\n"
            "EXPOSE 6379\n"
            "USER redis\n"
            'ENTRYPOINT ["/bin/sh", "/usr/local/bin/casera-redis"]\n'
            'CMD ["redis-server"]\n'
        ),
        files=("redis.conf", "redis-entrypoint.sh"),
    ),
    ImageRecipe("api", PYTHON_BASE, _python_dockerfile("api", 8080),
                (*_PY_COMMON, "asynq.py", "tokens.py", "uploads.py", "api.py")),
    ImageRecipe("worker", PYTHON_BASE, _python_dockerfile("worker", None),
                (*_PY_COMMON, "asynq.py", "worker.py")),
    ImageRecipe("admin", PYTHON_BASE, _python_dockerfile("admin", 3000),
                (*_PY_COMMON, "admin.py", "admin.html")),
    ImageRecipe("dozzle", PYTHON_BASE, _python_dockerfile("dozzle", 9999),
                (*_PY_COMMON, "dozzle.py")),
    ImageRecipe("backup", BACKUP_BASE, _python_dockerfile("backup", None),
                (*_PY_COMMON, "backup.py")),
)
IMAGES_BY_NAME = {image.name: image for image in IMAGES}
