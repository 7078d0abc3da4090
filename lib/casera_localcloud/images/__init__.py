"""The local cloud's Casera images (redis, api, worker, admin, dozzle), built from Debian
packages and served by the local registry (``casera_localcloud.registry``).

``up()`` starts the registry, builds only the images whose recipe changed and pushes them;
``node_refs()`` gives the references the nodes pull, and ``local_stack_settings()`` the
local stack file's settings (params/local.yaml with those references).
"""

from __future__ import annotations

from casera_localcloud import engine, registry
from casera_localcloud.images.build import (
    ImageBuildError,
    ImageResult,
    build_all,
    images_home,
    node_refs,
    push_ref,
    pushed_size,
    repository,
)
from casera_localcloud.images.recipes import IMAGES, IMAGES_BY_NAME
from casera_localcloud.images.stack_settings import local_stack_settings

__all__ = [
    "IMAGES",
    "IMAGES_BY_NAME",
    "ImageBuildError",
    "ImageResult",
    "build_all",
    "down",
    "local_stack_settings",
    "node_refs",
    "push_ref",
    "pushed_size",
    "status",
    "up",
]


def up() -> list[str]:
    # The registry's up() is idempotent; calling it here lets images.up() stand alone.
    lines = [engine.ensure_engine()]
    lines += registry.up()
    base_lines, results = build_all(engine.client(timeout=600))
    lines += base_lines
    lines += [result.line() for result in results]
    return lines


def down() -> list[str]:
    """Nothing of the images runs, so nothing stops: the images, the registry's storage and
    the rootfs cache stay, as they make the next ``up()`` fast. The registry has its own
    ``down()`` (``casera_localcloud.registry``)."""
    return [f"images: nothing running; cache kept ({images_home()})"]


def status() -> list[str]:
    lines: list[str] = []
    for recipe in IMAGES:
        try:
            present = recipe.tag() in registry.tags(repository(recipe.name))
        except OSError:
            lines.append(f"image {recipe.name}: unknown (registry not answering)")
            continue
        if present:
            lines.append(f"image {recipe.name}: {push_ref(recipe)} in the registry "
                         f"({pushed_size(recipe) / 1e6:.1f} MB compressed)")
        else:
            lines.append(f"image {recipe.name}: {push_ref(recipe)} not built yet")
    return lines
