"""Secret migration: the stack's secrets move from env vars (``stack.secrets_source:
legacy_env``, the seed's before-state) to Docker secrets mounted as files, on a live stack.

The sequence (runbooks/secret-migration.ipynb runs it, one step per cell):

1. :func:`inventory`: every secret-shaped env var in every service spec, by NAME only,
   matched to the Docker secret it becomes; a secret-shaped name the stack does not know is a
   red check (reported, never guessed at), so the run stops before any change.
2. the Docker secrets, from the operator's store (``swarm_secrets.ensure_swarm_secrets``;
   never read back from the running env).
3. :func:`roll_mounts` (roll 1): the stack deployed with the env vars AND the secret files
   (owned by the app's uid:gid, mode 0400). A running task never sees a new secret, so this
   is a rolling update: every task is replaced.
4. :func:`verify_file_sources`: every task of api, worker and backup reads each of its
   secrets from the file (the stand-in apps read the file first and fall back to the env var,
   ``apps.common.read_secret``). Only then is the env var safe to remove.
5. :func:`roll_env_out` (roll 2): the stack deployed as params render it (files only).
   Before it, Swarm's task history is lowered to 1 so that the old tasks, whose specs and
   stopped containers hold the values, are deleted as the roll replaces them; restored after.
6. :func:`clean_rollback_targets`: Swarm keeps each service's previous spec (roll 1's, env
   values and all) for ``docker service rollback``; sending the current spec back unchanged
   makes the clean spec the previous one too, replacing no task.
7. :func:`verify_no_values`: no secret value in any service Spec or PreviousSpec, any task's
   spec (history included), ``docker inspect`` of any container on any node, or the stack
   file kept on the manager.

Rolls go through ``docker stack deploy`` of rendered files with versioned external secrets:
the stack file stays the one description of the stack (after the migration it is exactly
what the bootstrap renders, so a bootstrap run changes nothing), and no ``--secret-rm`` (which
drops every mount of a name) or changed ``file:`` secret (which stack deploy refuses) is ever
needed. :func:`rollback` is one step: the legacy file deployed again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from casera.context import RunContext
from casera.errors import CaseraError, ProviderError
from casera.operator_secrets import Secret
from casera.plan import Plan, apply
from casera.progress import wait_for
from casera.providers import docker_swarm
from casera.result import StepResult, timed
from casera.stack import SECRET_ENV_VARS, SERVICE_SECRETS, SecretsSource, file_forms
from casera.steps import stack
from casera.steps.access import node_ssh
from casera.steps.swarm import Cluster, DockerClient, cluster_or_reason
from casera.steps.swarm_secrets import versions

MODES = ("migrate", "rollback")
# Env var names that look like they hold a secret (by name only; values are never read for
# this). CASERA_SECRET_NAMES ends in NAMES, so it is not one.
SECRET_SHAPED = re.compile(
    r"(^|_)(PASSWORD|PASSWD|PASS|PWD|TOKEN|SECRET|KEY|KEY_ID|APIKEY|CREDENTIALS?|DSN)$")
# The swarm's task-history limit before roll 2 lowered it, kept on the swarm itself so a run
# stopped in between restores it.
HISTORY_LABEL = "casera.secret-migration.task-history-limit"
# How each stand-in app reports where its secrets come from: its own read_secret() run inside
# the task (same user, same env, same /run/secrets). The api answers the same on
# /secret-sources; worker and backup serve no HTTP, so one way for all three. Casera's real
# app must offer an equivalent before this runbook is used on it.
SOURCES_COMMAND = ["python3", "-c", "import json; from standin.common import secret_sources; "
                   "print(json.dumps(secret_sources()))"]
PLANNED = "secret_migration"  # ctx.planned key: what a dry run's earlier steps would do


def check_mode(ctx: RunContext, mode: str) -> None:
    if mode not in MODES:
        raise CaseraError(f"mode {mode!r}: use one of {', '.join(MODES)} "
                          f"(casera run secret-migration --env {ctx.env} -p mode=...)")


def _skipped(result: StepResult, mode: str, wanted: str) -> bool:
    if mode != wanted:
        result.reason = f"mode {mode}: this step is for mode {wanted}"
        return True
    return False


def _changing(ctx: RunContext, result: StepResult, mode: str, wanted: str) -> Cluster | None:
    """The cluster for a step of mode ``wanted``; None (the reason set) in another mode, or
    in a dry run with no swarm yet (what the earlier steps would make is planned)."""
    if _skipped(result, mode, wanted):
        return None
    cluster, result.reason = cluster_or_reason(ctx)
    return cluster


def _checking(ctx: RunContext, result: StepResult, mode: str, dry: str) -> Cluster | None:
    """The cluster for a check of mode migrate; None (the reason set) in a dry run or another
    mode."""
    if _skipped(result, mode, "migrate"):
        return None
    if ctx.dry_run:
        result.reason = f"dry run: {dry}"
        return None
    cluster, _ = cluster_or_reason(ctx)  # a run raises when there is none
    return cluster


def _planned(ctx: RunContext) -> dict[str, Any]:
    return ctx.planned.setdefault(PLANNED, {})


def _container(spec: dict[str, Any] | None) -> dict[str, Any]:
    spec = spec or {}
    return (spec.get("TaskTemplate") or spec).get("ContainerSpec") or {}


def _env_names(container: dict[str, Any]) -> list[str]:
    return [str(item).split("=", 1)[0] for item in container.get("Env") or []]


def _mounted(container: dict[str, Any]) -> dict[str, str]:
    """target file name -> Docker secret name, of a ContainerSpec's secret mounts."""
    return {(ref.get("File") or {}).get("Name", ""): ref.get("SecretName", "")
            for ref in container.get("Secrets") or []}


def inventory(ctx: RunContext) -> StepResult:
    """Every secret-shaped env var in every service spec, by name, matched to its Docker
    secret; a name the stack does not know is red."""
    with timed(StepResult("secret inventory", "every service", dry_run=ctx.dry_run)) as result:
        cluster, result.reason = cluster_or_reason(ctx)
        if cluster is None:
            return result
        existing = versions(cluster.manager)
        unknown: list[str] = []
        found = 0
        for service in sorted(docker_swarm.services(cluster.manager), key=lambda s: s["name"]):
            names = [n for n in _env_names(_container(service["spec"]))
                     if SECRET_SHAPED.search(n)]
            for name in names:
                found += 1
                secret = SECRET_ENV_VARS.get(name)
                if secret is None:
                    unknown.append(f"{service['name']}: {name}")
                    continue
                have = existing.get(secret)
                result.note(f"{service['name']}: {name}",
                            f"-> Docker secret {secret} ("
                            + (f"{have[-1][1]} exists" if have else "to create") + ")")
        result.check("every secret-shaped env var has a Docker secret", not unknown,
                     "none unknown" if not unknown else
                     f"no Docker secret for {', '.join(unknown)}: not migrated (a guess could "
                     "break the service). Add it to the stack's secrets (casera.stack.SECRETS) "
                     "or remove it from the service, then run again")
        result.note("secret env vars found", f"{found} in service specs"
                    + ("" if found else ": nothing left to migrate"))
    return result


def _state(client: DockerClient) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The stack's services, and name -> the newest version of each secret (what mounts must
    name; empty before the secrets exist)."""
    return stack.stack_services(client), {
        name: items[-1][1] for name, items in versions(client).items()}


def _missing_mounts(services: dict[str, dict[str, Any]], newest: dict[str, str]
                    ) -> dict[str, list[str]]:
    """service -> the secrets its spec does not mount at their newest version."""
    missing = {}
    for service, names in SERVICE_SECRETS.items():
        if service not in services:
            missing[service] = list(names)
            continue
        mounted = _mounted(_container(services[service]["spec"]))
        lacking = [n for n in names if n not in mounted or mounted[n] != newest.get(n, "?")]
        if lacking:
            missing[service] = lacking
    return missing


def _roll(ctx: RunContext, cluster: Cluster, source: SecretsSource, result: StepResult,
          plan: Plan, line: str, title: str, timeout: float,
          before: Callable[[], None] | None = None,
          names: dict[str, str] | None = None) -> bool:
    """Plan one rolling update (``docker stack deploy`` of the file rendered for ``source``,
    with the secret versions ``names`` when given) behind the gate, apply it, wait until every
    task runs the new spec. False in a dry run."""
    leader = str(cluster.leader)
    conn = node_ssh(ctx, leader, cluster.nodes[leader])
    text, _ = stack.render_for(ctx, cluster, conn, source, names)

    def deploy() -> None:
        if before is not None:
            before()
        stack.deploy_text(conn, text)

    plan.gate_title = title
    plan.add(line, deploy, destructive=True)
    if apply(ctx, result, plan).dry_run:
        return False
    counts = stack.wait_converged(ctx, cluster.manager, timeout)
    result.note("tasks replaced and running", ", ".join(f"{n} {c}" for n, c in counts.items()))
    return True


def roll_mounts(ctx: RunContext, mode: str = "migrate", timeout: float = 900) -> StepResult:
    """Roll 1: every service that gets secrets mounts them (newest versions) while keeping its
    env vars."""
    with timed(StepResult("roll 1: add secret files", "api, worker, backup",
                          dry_run=ctx.dry_run)) as result:
        cluster = _changing(ctx, result, mode, "migrate")
        if cluster is None:
            return result
        services, newest = _state(cluster.manager)
        missing = _missing_mounts(services, newest)
        if not stack.legacy_env(cluster.manager):
            # Migrated already: a newer secret version is the stack step's to roll out (this
            # file would put the env vars back).
            result.reason = "no service carries a secret env var: nothing to migrate"
            return result
        if not missing:
            result.reason = "every service already mounts each of its secrets (newest version)"
            return result
        _planned(ctx)["roll1"] = True
        plan = Plan()
        for service, names in missing.items():
            plan.show(f"  {service}: + /run/secrets/{{{','.join(names)}}} (uid:gid of "
                      f"{getattr(ctx.params.services, service).user}, mode 0400); env vars kept")
        _roll(ctx, cluster, "both", result, plan,
              "~ docker stack deploy casera: secret files added, env vars kept (rolling)",
              "roll 1 of the secret migration: every api, worker and backup task is "
              "replaced, one at a time", timeout)
    return result


def _sources(cluster: Cluster, services: dict[str, dict[str, Any]]
             ) -> dict[str, list[dict[str, str]]]:
    """service -> what each of its running tasks reports: {secret: file|env|missing}."""
    hostnames = {n["id"]: n["hostname"] for n in docker_swarm.nodes(cluster.manager)}
    running = stack.running_tasks(cluster.manager)
    found: dict[str, list[dict[str, str]]] = {}
    for service in SERVICE_SECRETS:
        for task in running.get(services[service]["id"], []) if service in services else []:
            container = ((task.get("Status") or {}).get("ContainerStatus") or {}).get(
                "ContainerID", "")
            client = cluster.clients[hostnames[task["NodeID"]]]
            code, out = docker_swarm.exec_output(client, container, SOURCES_COMMAND)
            answer = json.loads(out.strip().splitlines()[-1]) if code == 0 else {
                "(exec)": f"exit {code}"}
            found.setdefault(service, []).append(answer)
    return found


def verify_file_sources(ctx: RunContext, mode: str = "migrate",
                        timeout: float = 300) -> StepResult:
    """Every running task of api, worker and backup reads each of its secrets from the file."""
    with timed(StepResult("secrets read from files", "api, worker, backup",
                          dry_run=ctx.dry_run)) as result:
        cluster = _checking(ctx, result, mode, "nothing rolled, nothing to ask the tasks")
        if cluster is None:
            return result
        stack.wait_converged(ctx, cluster.manager, timeout)
        services = stack.stack_services(cluster.manager)

        def all_files() -> dict[str, list[dict[str, str]]] | None:
            found = _sources(cluster, services)
            ok = all(service in found for service in SERVICE_SECRETS) and all(
                set(answer.values()) == {"file"} for answers in found.values()
                for answer in answers)
            return found if ok else None

        try:
            found = wait_for("every api, worker and backup task to read its secrets from "
                             "/run/secrets", all_files, timeout, interval=3)
        except CaseraError:
            found = _sources(cluster, services)
        for service, names in SERVICE_SECRETS.items():
            answers = found.get(service, [])
            not_file = sorted({f"{name}={src}" for answer in answers
                               for name, src in answer.items() if src != "file"})
            result.check(f"{service} reads secrets from files", bool(answers) and not not_file,
                         f"{len(answers)} task(s), {len(names)} secret(s) each: "
                         + ("all from /run/secrets" if answers and not not_file else
                            ", ".join(not_file) or "no running task"))
    return result


def _set_history_limit(client: DockerClient, limit: int | None) -> None:
    """Lower the swarm's task history to ``limit`` (the old value kept in a swarm label), or
    with None restore the kept value and drop the label."""
    version, spec = docker_swarm.swarm_spec(client)
    orchestration = dict(spec.get("Orchestration") or {})
    labels = dict(spec.get("Labels") or {})
    if limit is not None:
        labels.setdefault(HISTORY_LABEL, str(orchestration.get("TaskHistoryRetentionLimit", 5)))
        orchestration["TaskHistoryRetentionLimit"] = limit
    elif HISTORY_LABEL in labels:
        orchestration["TaskHistoryRetentionLimit"] = int(labels.pop(HISTORY_LABEL))
    else:
        return
    docker_swarm.update_swarm_spec(client, version, {**spec, "Orchestration": orchestration,
                                                     "Labels": labels})


def _history_limit(client: DockerClient) -> tuple[int, str | None]:
    _, spec = docker_swarm.swarm_spec(client)
    return (int((spec.get("Orchestration") or {}).get("TaskHistoryRetentionLimit", 5)),
            (spec.get("Labels") or {}).get(HISTORY_LABEL))


def _old_env_tasks(client: DockerClient) -> list[str]:
    """Tasks (any state) of the stack whose spec still carries a secret env var, by name."""
    services = {s["id"]: name for name, s in stack.stack_services(client).items()}
    return sorted(f"{services[t['ServiceID']]}.{t.get('Slot', '?')} {t['ID'][:12]} "
                  f"({(t.get('Status') or {}).get('State', '?')})"
                  for t in docker_swarm.tasks(client) if t.get("ServiceID") in services
                  and set(_env_names(_container(t.get("Spec")))) & set(SECRET_ENV_VARS))


def _old_env_containers(cluster: Cluster) -> list[tuple[str, dict[str, Any]]]:
    """(node, container) for every container on every node whose env has a secret env var."""
    return [(node, c) for node, client in sorted(cluster.clients.items())
            for c in docker_swarm.container_envs(client)
            if c["service"].startswith(f"{stack.STACK}_")
            and {e.split("=", 1)[0] for e in c["env"]} & set(SECRET_ENV_VARS)]


def roll_env_out(ctx: RunContext, mode: str = "migrate", timeout: float = 900) -> StepResult:
    """Roll 2: the stack as params render it (secret files only, no secret env var), with
    the old tasks and their stopped containers deleted as they are replaced."""
    with timed(StepResult("roll 2: remove secret env vars", "api, worker, backup",
                          dry_run=ctx.dry_run)) as result:
        cluster = _changing(ctx, result, mode, "migrate")
        if cluster is None:
            return result
        client = cluster.manager
        legacy = stack.legacy_env(client)
        if not legacy and not _planned(ctx).get("roll1"):
            result.reason = "no service spec carries a secret env var"
            return result
        services, newest = _state(client)
        if not ctx.dry_run and (missing := _missing_mounts(services, newest)):
            raise CaseraError("roll 2 would leave services without their secrets: "
                              + "; ".join(f"{s} does not mount {', '.join(n)}"
                                          for s, n in missing.items())
                              + ". Run roll 1 (this runbook from the start) first")
        _planned(ctx)["roll2"] = True
        limit, _ = _history_limit(client)
        plan = Plan()
        for service, names in (legacy or {s: ["(after roll 1)"] for s in SERVICE_SECRETS}
                               ).items():
            plan.show(f"  {service}: - env {', '.join(names)}")
        if limit > 1:
            plan.add(f"~ swarm task history {limit} -> 1 during the roll (restored after): "
                     "old tasks keep their spec, env values included, and their stopped "
                     "containers", None, count=0)
        if not _roll(ctx, cluster, "docker_secrets", result, plan,
                     "~ docker stack deploy casera: secret env vars removed (rolling)",
                     "roll 2 of the secret migration: the env vars go; every api, worker and "
                     "backup task is replaced, one at a time", timeout,
                     before=(lambda: _set_history_limit(client, 1)) if limit > 1 else None):
            return result
        _purge_history(ctx, cluster, result)
    return result


def _purge_history(ctx: RunContext, cluster: Cluster, result: StepResult,
                   timeout: float = 90) -> None:
    """Wait for Swarm's task reaper to delete the old tasks; remove stopped containers it
    left behind; restore the task-history limit."""
    client = cluster.manager
    try:
        wait_for("Swarm to delete the old tasks that carry secret env vars",
                 lambda: not _old_env_tasks(client) or None, timeout, interval=2)
    except CaseraError:
        pass  # named by verify_no_values, which is red while any remains
    _set_history_limit(client, None)
    limit, _ = _history_limit(client)
    result.note("task history", f"old tasks with secret env vars: "
                f"{len(_old_env_tasks(client))}; limit back to {limit}")


def clean_rollback_targets(ctx: RunContext, mode: str = "migrate") -> StepResult:
    """Services whose previous spec (Swarm's rollback target) still has a secret env var get
    their current, clean spec sent back unchanged: it becomes the previous spec too, and no
    task is replaced (the task spec does not change)."""
    with timed(StepResult("clean rollback targets", "every service",
                          dry_run=ctx.dry_run)) as result:
        cluster = _changing(ctx, result, mode, "migrate")
        if cluster is None:
            return result
        client = cluster.manager
        if not ctx.dry_run:
            # A run stopped during roll 2 left Swarm rolling: a spec sent now would restart
            # the update, and the history limit restored too early would keep old tasks.
            stack.wait_converged(ctx, client, 900)
        plan = Plan()
        rolled = _planned(ctx).get("roll2") and ctx.dry_run
        for service in docker_swarm.services(client):
            old = SECRET_ENV_VARS.keys() & set(_env_names(_container(service["previous_spec"])))
            now = SECRET_ENV_VARS.keys() & set(_env_names(_container(service["spec"])))
            short = service["name"].removeprefix(f"{stack.STACK}_")
            if (old and not now) or (rolled and short in SERVICE_SECRETS):
                plan.add(f"~ {service['name']}: previous spec has "
                         f"{', '.join(sorted(old)) or 'roll 1 env vars'}: current spec sent "
                         "again (no task replaced)",
                         lambda sid=service["id"]: docker_swarm.update_service_spec(
                             client, sid, *docker_swarm.service_spec(client, sid)))
        live = {t["ID"] for t in docker_swarm.tasks(client)}
        for node, container in _old_env_containers(cluster):
            if not container["running"] and container["task"] not in live:
                # Its task is gone from Swarm (the reaper deleted it) but the node kept the
                # stopped container, whose inspect still shows the values.
                plan.add(f"- {node}: stopped container {container['name']} (its task is gone; "
                         "its env holds secret values)",
                         lambda n=node, c=container["id"]: _remove_gone(cluster.clients[n], c))
        limit, kept = _history_limit(client)
        if kept is not None:
            plan.add(f"~ swarm task history {limit} -> {kept} (a run stopped during roll 2 "
                     "left it lowered)", lambda: _set_history_limit(client, None))
        if not plan:
            result.reason = ("no previous spec carries a secret env var, no stopped container "
                             "of a deleted task holds one")
        apply(ctx, result, plan)
    return result


def _remove_gone(client: DockerClient, container_id: str) -> None:
    try:
        docker_swarm.remove_container(client, container_id)
    except ProviderError as exc:
        # The node's agent removed it meanwhile (404) or is removing it (409).
        if exc.code not in ("404", "409"):
            raise


def _leaks(text: str, forms: dict[str, list[str]]) -> list[str]:
    return sorted(name for name, values in forms.items() if any(v in text for v in values))


def verify_no_values(ctx: RunContext, values: dict[str, Secret],
                     mode: str = "migrate") -> StepResult:
    """No value of ``values`` in any service Spec or PreviousSpec, any task's spec, any
    container on any node (``docker inspect``), or the stack file on the manager; names only
    in what is shown."""
    with timed(StepResult("no secret values left", "specs, tasks, containers, stack file",
                          dry_run=ctx.dry_run)) as result:
        cluster = _checking(ctx, result, mode, "nothing changed to verify")
        if cluster is None:
            return result
        client = cluster.manager
        forms = {name: file_forms(v.reveal()) for name, v in values.items()
                 if len(v.reveal()) >= 4}
        spec_leaks, previous_leaks = [], []
        for service in docker_swarm.services(client):
            spec_leaks += [f"{service['name']}:{n}" for n in
                           _leaks(json.dumps(service["spec"]), forms)]
            previous_leaks += [f"{service['name']}:{n}" for n in
                               _leaks(json.dumps(service["previous_spec"] or {}), forms)]
        tasks = docker_swarm.tasks(client)
        task_leaks = sorted({f"task {t['ID'][:12]}:{n}" for t in tasks
                             for n in _leaks(json.dumps(t.get("Spec") or {}), forms)})
        containers = [(node, c) for node, c_client in sorted(cluster.clients.items())
                      for c in docker_swarm.container_envs(c_client)]
        container_leaks = sorted({f"{node}/{c['name']}:{n}" for node, c in containers
                                  for n in _leaks("\n".join(c["env"]), forms)})
        leader = str(cluster.leader)
        stack_file = stack.deployed_file(node_ssh(ctx, leader, cluster.nodes[leader]))
        file_leaks = _leaks(stack_file, forms)
        legacy_names = sorted({f"{s['name']}:{n}" for s in docker_swarm.services(client)
                               for n in set(_env_names(_container(s["spec"])))
                               & set(SECRET_ENV_VARS)})

        def say(found: list[str], where: str) -> str:
            return (f"FOUND ({', '.join(found[:8])}{' ...' if len(found) > 8 else ''}; values "
                    "not shown)" if found else f"none of {len(forms)} values in {where}")

        result.check("no secret env var in any service spec", not legacy_names,
                     ", ".join(legacy_names) or "names checked in every service's Env")
        result.check("service specs", not spec_leaks, say(spec_leaks, "any Spec"))
        result.check("previous specs (rollback targets)", not previous_leaks,
                     say(previous_leaks, "any PreviousSpec"))
        result.check("task specs, history included", not task_leaks,
                     say(task_leaks, f"{len(tasks)} tasks"))
        result.check("containers on every node (docker inspect)", not container_leaks,
                     say(container_leaks, f"{len(containers)} containers"))
        result.check("stack file on the manager", not file_leaks,
                     say(file_leaks, stack.REMOTE_FILE))
    return result


def rollback(ctx: RunContext, mode: str = "migrate", timeout: float = 900) -> StepResult:
    """One step back to the before-state: the stack deployed with the values in env vars and
    no secret file (params' legacy_env rendering); every task then reads the env var. The
    Docker secrets stay (nothing mounts them; the next migration uses them)."""
    with timed(StepResult("rollback to env vars", "api, worker, backup",
                          dry_run=ctx.dry_run)) as result:
        cluster = _changing(ctx, result, mode, "rollback")
        if cluster is None:
            return result
        leader = str(cluster.leader)
        conn = node_ssh(ctx, leader, cluster.nodes[leader])
        legacy_text, _ = stack.render_for(ctx, cluster, conn, "legacy_env")
        if (stack.deployed_file(conn).strip() == legacy_text.strip()
                and stack.converged(ctx, cluster.manager)):
            result.reason = "the legacy stack file is deployed and every task runs it"
        elif not _roll(ctx, cluster, "legacy_env", result, Plan(),
                       "~ docker stack deploy casera: secret values back in env vars, secret "
                       "files removed (rolling)",
                       "rollback of the secret migration: every api, worker and backup task is "
                       "replaced, one at a time, with the values in its env vars", timeout):
            return result
        services = stack.stack_services(cluster.manager)
        found = _sources(cluster, services)
        for service in SERVICE_SECRETS:
            answers = found.get(service, [])
            bad = sorted({f"{n}={s}" for a in answers for n, s in a.items() if s != "env"})
            result.check(f"{service} reads secrets from env vars", bool(answers) and not bad,
                         f"{len(answers)} task(s): " + (", ".join(bad) or "all from env"))
        result.note("params", f"to stay rolled back set stack.secrets_source: legacy_env in "
                    f"params/{ctx.env}.yaml (the bootstrap refuses a legacy stack otherwise)")
    return result

