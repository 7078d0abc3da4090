#!/usr/bin/env bash
# Commit the executed notebooks of an environment (outputs/<env>/) to an audit branch and
# push it, without touching the checked-out branch, its index or the working tree:
#   scripts/keep-audit-branch.sh ENV [BRANCH] [REMOTE]     (defaults: audit/ENV, origin)
# Each call adds one commit on top of the branch (made on the first call), holding every
# notebook kept so far: the branch is the append-only record CI leaves of its runs. The
# notebooks hold no secret (the runner scrubs and scans each before keeping it).
set -euo pipefail
env="${1:?usage: scripts/keep-audit-branch.sh ENV [BRANCH] [REMOTE]}"
branch="${2:-audit/$env}"
remote="${3:-origin}"
cd "$(git rev-parse --show-toplevel)"
if [ ! -d "outputs/$env" ]; then
  echo "no outputs/$env: nothing to keep" >&2
  exit 1
fi
index="$(mktemp -u)"
trap 'rm -f "$index"' EXIT
export GIT_INDEX_FILE="$index"
parent=""
if git fetch -q "$remote" "refs/heads/$branch" 2>/dev/null; then
  parent="$(git rev-parse FETCH_HEAD)"
  git read-tree "$parent"
fi
# Into the scratch index only; --ignore-removal: a fresh CI machine has only its own run,
# and the runs kept before must stay on the branch.
git add -f --ignore-removal "outputs/$env"
tree="$(git write-tree)"
if [ -n "$parent" ] && [ "$tree" = "$(git rev-parse "$parent^{tree}")" ]; then
  echo "audit branch $branch: nothing new"
  exit 0
fi
message="$env runs kept $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git rev-parse --short HEAD)"
if [ -n "$parent" ]; then
  commit="$(git commit-tree "$tree" -p "$parent" -m "$message")"
else
  commit="$(git commit-tree "$tree" -m "$message")"
fi
git push -q "$remote" "$commit:refs/heads/$branch"
echo "audit branch $branch: $(git rev-parse --short "$commit") pushed to $remote"
