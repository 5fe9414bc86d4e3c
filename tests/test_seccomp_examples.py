"""python3, node and bash + jq governance-style examples run unchanged under
the `default` and the `strict` seccomp profiles (on_violation: kill), and
learning mode writes a fragment that lets the same run pass again.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from conftest import NEEDS_ROOT, policy_yaml
from jail import Jail
from jail.policy import parse_policy_text

pytestmark = NEEDS_ROOT

BALLOTS = [{"voter": f"v{i:03d}", "choice": ["yes", "no", "abstain"][i % 3 if i % 7 else 0]}
           for i in range(60)]

PYTHON = textwrap.dedent("""\
    import collections, datetime, decimal, hashlib, json, os, sys, traceback
    with open("/job/in/ballots.json") as f:
        raw = f.read()
    ballots = json.loads(raw)
    tally = collections.Counter(b["choice"] for b in ballots)
    share = {k: str(decimal.Decimal(v) / decimal.Decimal(len(ballots))) for k, v in tally.items()}
    try:
        raise ValueError("exercise the error path")
    except ValueError:
        traceback.print_exc(file=sys.stderr)
    out = {"tally": dict(sorted(tally.items())), "share": share,
           "sha256": hashlib.sha256(raw.encode()).hexdigest(),
           "at": datetime.datetime.now(datetime.timezone.utc).year > 2000,
           "cwd": os.getcwd()}
    with open("/job/out/result.json", "w") as f:
        json.dump(out, f, sort_keys=True)
    print("yes=%d no=%d abstain=%d" % (tally["yes"], tally["no"], tally["abstain"]))
    """)

NODE = textwrap.dedent("""\
    const fs = require("fs");
    const crypto = require("crypto");
    const raw = fs.readFileSync("/job/in/ballots.json", "utf8");
    const ballots = JSON.parse(raw);
    const tally = {};
    for (const b of ballots) tally[b.choice] = (tally[b.choice] || 0) + 1;
    const sha256 = crypto.createHash("sha256").update(raw).digest("hex");
    setTimeout(async () => {
      await fs.promises.writeFile("/job/out/result.json",
                                  JSON.stringify({tally, sha256}, null, 1));
      console.log(`yes=${tally.yes} no=${tally.no} abstain=${tally.abstain}`);
    }, 5);
    """)

BASH = textwrap.dedent("""\
    set -euo pipefail
    total=$(jq 'length' /job/in/ballots.json)
    jq -r 'group_by(.choice) | map("\\(.[0].choice) \\(length)") | .[]' \\
        /job/in/ballots.json > /job/out/tally.txt
    declare -A n
    while read -r choice count; do n[$choice]=$count; done < /job/out/tally.txt
    echo "yes=${n[yes]} no=${n[no]} abstain=${n[abstain]}"
    [ "$total" -eq 60 ]
    """)

EXAMPLES = {
    "python3": (PYTHON, "tally.py", ["/usr/bin/python3", "/job/in/tally.py"]),
    "node": (NODE, "tally.js", ["/usr/bin/node", "/job/in/tally.js"]),
    "bash+jq": (BASH, "tally.sh", ["/bin/bash", "/job/in/tally.sh"]),
}


def expected_line() -> str:
    c = {k: sum(1 for b in BALLOTS if b["choice"] == k) for k in ("yes", "no", "abstain")}
    return f"yes={c['yes']} no={c['no']} abstain={c['abstain']}"


def example_policy(tmp: Path, kind: str, seccomp: str) -> tuple[object, list[str]]:
    code, fname, argv = EXAMPLES[kind]
    indir, outdir = tmp / "in", tmp / "out"
    indir.mkdir(exist_ok=True)
    outdir.mkdir(exist_ok=True)
    os.chmod(outdir, 0o777)
    (indir / "ballots.json").write_text(json.dumps(BALLOTS))
    (indir / fname).write_text(code)
    mounts = (f"- {{source: {indir}, target: /job/in}}\n"
              f"- {{source: {outdir}, target: /job/out, mode: rw}}\n")
    policy = parse_policy_text(policy_yaml(seccomp, mounts), filename=str(tmp / "p.yml"),
                               base_dir=str(tmp))
    wrapped = ["/bin/sh", "-c", 'exec "$@" >/job/out/stdout 2>/job/out/stderr', "sh", *argv]
    return policy, wrapped


def run_example(tmp: Path, kind: str, seccomp: str, options: dict | None = None):
    policy, argv = example_policy(tmp, kind, seccomp)
    res = Jail(policy, options=options).run(argv)
    out = (tmp / "out" / "stdout").read_text() if (tmp / "out" / "stdout").exists() else ""
    err = (tmp / "out" / "stderr").read_text() if (tmp / "out" / "stderr").exists() else ""
    return res, out, err


def need(kind: str) -> None:
    exe = {"python3": "python3", "node": "node", "bash+jq": "jq"}[kind]
    if not shutil.which(exe, path="/usr/bin"):
        pytest.skip(f"{exe} is not installed on this host")


@pytest.mark.parametrize("profile", ["default", "strict"])
@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_example_runs_unchanged(tmp_path: Path, kind: str, profile: str) -> None:
    need(kind)
    res, out, err = run_example(tmp_path, kind, f"seccomp: {{profile: {profile}, on_violation: kill}}\n")
    assert res.status == "ok", (res.reason, res.seccomp, err)
    assert out.strip() == expected_line(), err
    assert res.seccomp is None
    assert res.layers["seccomp"] == f"{profile}/kill"
    assert not [a for a in res.alerts if a["kind"].startswith("seccomp")]


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_learned_fragment_reruns_under_kill(tmp_path: Path, kind: str) -> None:
    """--seccomp-learn writes a reviewable fragment; pasted into the policy, the run passes."""
    need(kind)
    learned = tmp_path / "learned.yml"
    res, out, err = run_example(tmp_path, kind, "", options={"seccomp_learn": str(learned)})
    assert res.status == "ok", (res.reason, err)
    assert out.strip() == expected_line()
    assert res.layers["seccomp"] == "learn"
    text = learned.read_text()
    assert text.startswith("# hivejail --seccomp-learn")
    assert "profile: strict" in text and "on_violation: kill" in text
    assert "execve" in text or "openat" in text          # the full list, as comments
    res2, out2, err2 = run_example(tmp_path, kind, text)
    assert res2.status == "ok", (res2.reason, res2.seccomp, err2)
    assert out2.strip() == expected_line()
    assert res2.layers["seccomp"] == "strict/kill"
