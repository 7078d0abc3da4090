"""``casera``: the command line. Validates and dispatches; the work is in the modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from casera.errors import CaseraError, SecretLeakError
from casera.runner import audit, lock, report
from casera.runner.run import EXIT_BAD_INPUT, EXIT_LEAK, RunRequest, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="casera", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="execute a runbook headlessly and keep the output")
    p_run.add_argument("runbook", help="name of a notebook in runbooks/ (without .ipynb)")
    p_run.add_argument("--env", required=True, help="params/<env>.yaml to use")
    p_run.add_argument("-p", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                       help="a runbook parameter, or a params override such as "
                            "services.api.replicas=4 (repeatable)")
    p_run.add_argument("--dry-run", action="store_true", help="show every step's plan, change "
                       "nothing")
    p_run.add_argument("--approve", action="store_true",
                       help="approve destructive steps of this headless run")
    p_run.add_argument("--break-lock", action="store_true",
                       help="break the env lock left by a run that died (not one whose "
                            "process still runs on this host)")
    p_run.add_argument("--cell-timeout", type=int, default=None, metavar="SECONDS",
                       help="override params runner.cell_timeout_s")

    p_runs = sub.add_parser("runs", help="list the audit trail")
    p_runs.add_argument("--env", default=None)
    p_runs.add_argument("--html", action="store_true",
                        help="write outputs/index.html (every run, linking to its report)")

    p_show = sub.add_parser("show", help="render a run to one self-contained HTML file for "
                            "reviewers (works offline)")
    p_show.add_argument("run", help="run id (or prefix) or path of an output notebook")

    p_diff = sub.add_parser("diff", help="what differs between two runs of one runbook")
    p_diff.add_argument("run_a", help="the earlier run: id (or prefix) or path")
    p_diff.add_argument("run_b", help="the later run: id (or prefix) or path")

    p_lock = sub.add_parser("lock", help="show who holds an environment's lock (a firewall "
                            "casera-lock-ENV in its Hetzner project)")
    p_lock.add_argument("--env", required=True)

    # Commands other distributions add (the local cloud registers `local`): found through
    # entry points, so this package never imports them and installs without them.
    for name in sorted(_plugins()):
        p_plugin = sub.add_parser(name, help=f"{name}: a command of an installed plugin")
        p_plugin.add_argument("args", nargs=argparse.REMAINDER)
    return parser


PLUGIN_GROUP = "casera.commands"


def _plugins() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def _plugin(name: str) -> Callable[[list[str]], int]:
    return _plugins()[name].load()  # type: ignore[attr-defined, no-any-return]


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["local"] and "local" not in _plugins():
        print("casera: `casera local` comes with the local cloud, which is not installed here. "
              "Install it from a checkout: pip install -e ./localcloud (make install does)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            outcome = run(RunRequest(runbook=args.runbook, env=args.env, settings=args.settings,
                                     dry_run=args.dry_run, approve=args.approve,
                                     break_lock=args.break_lock,
                                     cell_timeout_s=args.cell_timeout))
            stream = sys.stdout if outcome.exit_code == 0 else sys.stderr
            print(outcome.message, file=stream)
            return outcome.exit_code
        if args.command == "runs":
            if args.html:
                index, warnings = report.write_index(args.env)
                for warning in warnings:
                    print(f"casera: {warning}", file=sys.stderr)
                print(index)
                return 0
            print(audit.format_table(audit.list_runs(args.env)))
            return 0
        if args.command == "show":
            shown, warnings = report.render_report(audit.find_run(args.run))
            for warning in warnings:
                print(f"casera: {warning}", file=sys.stderr)
            print(shown)
            return 0
        if args.command == "diff":
            print(report.diff_runs(audit.find_run(args.run_a), audit.find_run(args.run_b)))
            return 0
        if args.command == "lock":
            from casera.operator_secrets import SecretStore
            from casera.params import load_params

            secrets = SecretStore(args.env)
            env_lock = lock.env_lock(args.env, load_params(args.env, secrets=secrets), secrets)
            holder = env_lock.holder()
            print(holder.describe() if holder else f"env {args.env} is not locked")
            return 0
        if args.command in _plugins():
            return _plugin(args.command)(args.args)
    except SecretLeakError as exc:
        print(f"casera: SECRET LEAK: {exc}", file=sys.stderr)
        return EXIT_LEAK
    except CaseraError as exc:
        print(f"casera: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
