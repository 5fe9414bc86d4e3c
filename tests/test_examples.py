"""The shipped governance tasks run in the jail under their shipped policies.

Python (tally), Node (hash-chain check) and Bash + jq (consensus), each
reading a read-only input folder and writing to an rw output folder.  The
policies' output folder and audit log are pointed at scratch folders.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import tempfile
from pathlib import Path

import pytest

from jail import Jail
from jail.policy import load_policy

ROOT = Path(__file__).resolve().parent.parent
TASKS = {
    "tally": ("tally.json", lambda d: d["winner"] == "yes" and d["votes"] == 7),
    "chain": ("chain.json", lambda d: d["valid"] is True and d["records"] == 7),
    "consensus": ("consensus.json", lambda d: d["reached"] is True and d["leading_votes"] == 5),
}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs as root")


def command_of(policy_file: Path) -> list[str]:
    """The documented command: the policy's `#   hivejail exec … -- CMD` comment line."""
    for line in policy_file.read_text().splitlines():
        if line.startswith("#") and "hivejail exec" in line:
            return shlex.split(line.split(" -- ", 1)[1])
    raise AssertionError(f"{policy_file} documents no command")


def prepared(policy_file: Path, out: Path, profile: str | None = None):
    policy = load_policy(str(policy_file))
    mounts = tuple(dataclasses.replace(m, source=str(out)) if m.target == "/job/out" else m
                   for m in policy.filesystem.mounts)
    policy = dataclasses.replace(policy, filesystem=dataclasses.replace(policy.filesystem, mounts=mounts),
                                 audit=dataclasses.replace(policy.audit, dir=None, required=False))
    if profile:
        policy = dataclasses.replace(policy, seccomp=dataclasses.replace(policy.seccomp, profile=profile))
    return policy


@pytest.fixture
def out_dir():
    d = Path(tempfile.mkdtemp(prefix="hjtest-out-"))
    os.chown(d, 65534, 65534)
    yield d
    import shutil
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("profile", ["default", "strict"])
def test_task_runs_in_the_jail(task, profile, out_dir):
    policy_file = ROOT / "policies" / f"{task}.yml"
    (ROOT / "demo-out").mkdir(exist_ok=True)       # the policy's own source must exist
    policy = prepared(policy_file, out_dir, profile)
    result = Jail(policy).run(command_of(policy_file))
    assert result.status == "ok", result.reason
    name, check = TASKS[task]
    data = json.loads((out_dir / name).read_text())
    assert check(data), data
    assert result.script_sha256 is not None
    # The inputs stayed read-only: nothing was written next to them.
    assert sorted(p.name for p in (ROOT / "examples" / "data" / "proposal-0004").iterdir()) == ["votes.jsonl"]


def test_tampered_chain_is_reported(out_dir, tmp_path):
    """The Node task is a real check: an edited vote breaks the chain (exit 1)."""
    votes = (ROOT / "examples/data/proposal-0004/votes.jsonl").read_text().splitlines()
    votes[3] = votes[3].replace('"yes"', '"no"')
    data = tmp_path / "votes"
    data.mkdir()
    (data / "votes.jsonl").write_text("\n".join(votes) + "\n")
    os.chmod(tmp_path, 0o755)
    policy_file = ROOT / "policies" / "chain.yml"
    policy = prepared(policy_file, out_dir)
    mounts = tuple(dataclasses.replace(m, source=str(data)) if m.target == "/job/votes" else m
                   for m in policy.filesystem.mounts)
    policy = dataclasses.replace(policy, filesystem=dataclasses.replace(policy.filesystem, mounts=mounts))
    result = Jail(policy).run(command_of(policy_file))
    assert result.status == "nonzero_exit" and result.exit_code == 1
    report = json.loads((out_dir / "chain.json").read_text())
    assert report["valid"] is False and report["problems"][0]["line"] == 5
