"""Stack settings for the local cloud: params/local.yaml as every environment reads it
(``casera.stack.settings_from_params``), with the stand-in images as the nodes pull them.

Users, healthchecks, networking and the database endpoint all come from params/local.yaml;
this only swaps in the content-tagged references of the images built here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from casera.params import load_params
from casera.stack import StackSettings, settings_from_params
from casera_localcloud.images.build import node_refs

if TYPE_CHECKING:
    from casera.params import Params


def local_stack_settings(secrets: dict[str, str], docker_socket_gid: int,
                         params: Params | None = None) -> StackSettings:
    """``settings_from_params`` for the local params (or ``params``, e.g. loaded with
    overrides) and the images this machine built."""
    return settings_from_params(params or load_params("local"), secrets=secrets,
                                docker_socket_gid=docker_socket_gid, images=node_refs())
