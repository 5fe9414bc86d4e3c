"""Shared fixtures: run real jails against the real kernel, as root.

``jail_policy(**sections)`` builds a policy from the default one with YAML-like
section overrides; ``run_jail(policy, argv)`` runs it and returns the Result.
Hostile payloads are written to a tmp folder that is mounted read-only at
/job/in, so they only ever execute inside a jail.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jail import Jail, Result  # noqa: E402
from jail.policy import parse_policy_text  # noqa: E402

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs as root")

# Every run of this session (in-process and CLI subprocesses, which inherit the
# variable) lives below a cgroup parent of its own, removed at the end.
CGROUP_PARENT = os.environ.setdefault("HIVEJAIL_CGROUP_PARENT", f"hjtest-{os.getpid()}")


@pytest.fixture(scope="session", autouse=True)
def _session_cgroup_parent():
    yield
    if os.geteuid() == 0:
        import cgroups
        try:
            cgroups.open_driver(CGROUP_PARENT).remove_parents()
        except Exception:  # noqa: BLE001 - no cgroups here: nothing was made
            pass


def policy_yaml(extra: str = "", mounts: str = "", base: str = "/") -> str:
    """A test policy: default /usr mounts + ``mounts`` entries, audit off."""
    text = textwrap.dedent(f"""\
        version: 1
        name: test
        filesystem:
          mounts:
            - {{source: /usr, target: /usr}}
        """)
    for line in textwrap.dedent(mounts).strip().splitlines():
        text += f"    {line}\n"
    text += "  symlinks: {/bin: usr/bin, /lib: usr/lib, /lib64: usr/lib64, /sbin: usr/sbin}\n"
    extra = textwrap.dedent(extra)
    if "audit:" not in extra:
        text += "audit: {dir: null}\n"
    return text + extra


@pytest.fixture
def make_policy(tmp_path: Path):
    def make(extra: str = "", mounts: str = ""):
        return parse_policy_text(policy_yaml(extra, mounts), filename=str(tmp_path / "policy.yml"),
                                 base_dir=str(tmp_path))
    return make


@pytest.fixture
def run_jail():
    def run(policy, argv: list[str], cwd: str | None = None) -> Result:
        return Jail(policy).run(argv, cwd=cwd)
    return run


@pytest.fixture
def hostile(tmp_path: Path, make_policy, run_jail):
    """hostile(code, extra_policy="", mounts="") runs a Python snippet inside a jail.

    The snippet is stored at tmp/in/payload.py, mounted read-only at /job/in.
    Returns (Result, stdout_text) — stdout captured through an rw /job/out file.
    """
    def run(code: str, extra: str = "", mounts: str = "", argv: list[str] | None = None,
            interpreter: str = "/usr/bin/python3") -> tuple[Result, str]:
        indir, outdir = tmp_path / "in", tmp_path / "out"
        indir.mkdir(exist_ok=True)
        outdir.mkdir(exist_ok=True)
        os.chmod(outdir, 0o777)
        (indir / "payload.py").write_text(textwrap.dedent(code))
        m = f"- {{source: {indir}, target: /job/in}}\n- {{source: {outdir}, target: /job/out, mode: rw}}\n"
        policy = make_policy(extra, m + textwrap.dedent(mounts))
        cmd = argv or [interpreter, "/job/in/payload.py"]
        wrapped = ["/bin/sh", "-c", 'exec "$@" >/job/out/stdout 2>/job/out/stderr', "sh", *cmd]
        res = run_jail(policy, wrapped)
        out = (outdir / "stdout").read_text() if (outdir / "stdout").exists() else ""
        err = (outdir / "stderr").read_text() if (outdir / "stderr").exists() else ""
        res.stderr = err  # type: ignore[attr-defined]
        return res, out
    return run


def parse_kv(out: str) -> dict[str, Any]:
    """Payloads print KEY=VALUE lines; tests read them back."""
    d: dict[str, Any] = {}
    for line in out.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            d[k.strip()] = v.strip()
    return d
