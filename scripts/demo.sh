#!/usr/bin/env bash
# The demo: three governance tasks (Python tally, Node hash-chain check,
# Bash + jq consensus) run in the jail under policies/*.yml, every run signed
# into the audit log, which is then verified with the operator's key.
# Run scripts/setup.sh first (as root).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${HIVEJAIL_VENV:-/opt/hivejail/venv}
hj="$venv/bin/hivejail"
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (or see the README for rootless use)" >&2; exit 1; }
[ -x "$hj" ] || { echo "demo.sh: $hj missing: run scripts/setup.sh first" >&2; exit 1; }
cd "$here"
mkdir -p demo-out demo-state
chown 65534:65534 demo-out            # the jail's payload runs as nobody (run_as 65534)
if [ ! -e demo-state/audit/key ]; then
  # The verifier key belongs OFF the host; the demo keeps it beside, not inside, the log.
  "$hj" audit init --dir demo-state/audit > demo-state/verifier.key
fi
status=0
for task in tally chain consensus; do
  cmd=$(sed -n 's/^#   hivejail exec .* -- //p' "policies/$task.yml")
  echo "== $task: hivejail exec --policy policies/$task.yml -- $cmd"
  # shellcheck disable=SC2086  # the command is the policy's documented one, split on spaces
  "$hj" exec --policy "policies/$task.yml" --result-file "demo-out/$task.result.json" -- $cmd || status=$?
  python3 - "demo-out/$task.result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = r["cpu_user_s"] + r["cpu_sys_s"]
print(f"   status={r['status']} exit={r['exit_code']} wall={r['wall_s']:.3f}s cpu={cpu:.3f}s "
      f"mem_peak={r['memory_peak_bytes']} layers={sorted(r.get('layers', {}))} "
      f"audit_seq={(r.get('audit') or {}).get('seq')}")
PY
done
echo "== audit log"
"$hj" audit show --dir demo-state/audit | tail -3
"$hj" audit verify --dir demo-state/audit --vkey demo-state/verifier.key
exit $status
