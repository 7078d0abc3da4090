"""Hetzner Cloud API emulator for the local cloud.

A stateful HTTP server speaking the subset of the official API the runbooks use, so
``hcloud.Client(token, api_endpoint="http://127.0.0.1:18001/v1")`` works unchanged. Answers
are shaped after the official OpenAPI spec and checked against it in the tests.

- Resources: ssh_keys, locations, datacenters, server_types (cx23, cx33, cx43 in the EU
  locations only; ccx13, ccx23 everywhere; prices in EUR, see catalog.py), images
  (docker-ce app, debian-12 system), servers (+ poweron, poweroff, shutdown, reboot,
  reset), actions, firewalls (+ set_rules, apply_to_resources, remove_from_resources),
  load_balancer_types, load_balancers (+ add/update/delete_service, add/remove_target),
  pricing. Lists page (``page``, ``per_page`` 25/max 50), filter by ``name`` and
  ``label_selector``, sort by id/name/created.
- Real effects go through ``backend.NodeBackend`` (nodes, their iptables) and
  ``lb_proxy.LoadBalancerProxies`` (a TCP proxy per LB service on 127.0.0.1:18100-18199,
  reported as ``emulator_listen_port`` on each service).
- Every request body is checked against Hetzner's OpenAPI description (validation.py,
  package data ``data/hcloud-openapi.json``); unknown paths and methods answer 404
  ``not_found`` in Hetzner's JSON error shape, never an HTML page.
- Fault injection, off by default: see ``faults.py`` (``POST /v1/_emulator/faults`` sets,
  ``DELETE /v1/_emulator/faults`` turns all off; not kept across a restart).
- Known differences from Hetzner: no IPv6 (``ipv6`` is null), no private networks,
  volumes, placement groups, certificates or https services; LB algorithm round_robin only;
  renaming a server keeps its node's name; deleting an LB answers with an action (as
  hcloud 2.27 expects) where the OpenAPI copy says 204.

``up``/``down``/``status`` serve ``casera local``; ``python -m casera_localcloud.hetzner``
runs it in the foreground.
"""

from __future__ import annotations

from casera_localcloud.hetzner.service import down, endpoint, status, up

__all__ = ["down", "endpoint", "status", "up"]
