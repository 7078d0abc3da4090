#!/usr/bin/env bash
# Rebuild an environment from params, the way CI does for staging (papermill, headless):
#   1. teardown   (servers, LB, firewall, DNS record, certificates, scoped keys; data kept)
#   2. bootstrap  (everything again, onto the kept data)
#   3. health     (read-only: live state equals params, exit 1 on drift)
#   4. load-test  (a short load test; thresholds from params are checks)
# It stops at the first step that fails. Every executed notebook is kept by the runner in
# outputs/<env>/<runbook>/ as the record, whether the step passed or not.
#
#   scripts/staging-rebuild.sh ENV        ENV: staging (CI), or local (tried in `make test`)
#
# Secrets come from the environment (CASERA_* variables, the CI's secret store) or from
# secrets/<env>.env on an operator's machine; never from this script or the repository.
set -uo pipefail

env="${1:-}"
if [ -z "$env" ] || [ "$#" -ne 1 ]; then
  echo "usage: scripts/staging-rebuild.sh ENV   (staging, or local)" >&2
  exit 2
fi
if [ "$env" = production ]; then
  # A rebuild tears down first: production is never rebuilt by a script.
  echo "refused: scripts/staging-rebuild.sh never runs on production (it tears the" \
       "environment down first). Run the teardown runbook by hand if that is really meant." >&2
  exit 2
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
casera="${CASERA:-$here/.venv/bin/casera}"
if [ ! -x "$casera" ]; then
  echo "no casera at $casera: run 'make install' first (or set CASERA=/path/to/casera)" >&2
  exit 2
fi
cd "$here" || exit 2

started=$(date +%s)
step() {
  local name="$1"; shift
  local t0
  t0=$(date +%s)
  echo "== staging-rebuild $env: $name ($(date -u +%H:%M:%SZ))"
  "$casera" run "$name" --env "$env" "$@"
  local rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s"
  if [ "$rc" -ne 0 ]; then
    echo "staging-rebuild $env: STOPPED at $name (exit $rc); the steps after it did not run." >&2
    echo "The executed notebooks are in outputs/$env/ (casera runs --env $env)." >&2
    exit "$rc"
  fi
}

step teardown --approve -p "confirm=$env"
step bootstrap --approve
step health
step load-test
echo "staging-rebuild $env: all 4 steps succeeded in $(( $(date +%s) - started )) s;" \
     "notebooks in outputs/$env/"
