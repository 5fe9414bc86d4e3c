"""Run `hivejail exec` for real, as root or as an unprivileged user the suite creates.

Root mode runs the CLI as this (root) process's child; rootless mode runs it
through setpriv as the user ``hjtest`` with a copy of the package the user can
read and Debian's Python venv (root's pyenv Python is in a 0700 folder).
Every run gets its own world-readable scratch folder under /tmp (pytest's
tmp_path is 0700, unreadable for the test user): in/ (mounted read-only at
/job/in), out/ (mounted rw at /job/out), policy.yml, result.json.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# One unprivileged user per test session (pytest process): concurrent sessions on
# one machine must not delete each other's user. Children inherit the name.
TEST_USER = os.environ.setdefault("HIVEJAIL_TEST_USER", f"hjtest{os.getpid()}")
VENV_PYTHON = os.environ.get("HIVEJAIL_TEST_PYTHON", "/opt/hivejail/venv/bin/python")
# Python under QEMU's software emulation runs ~20x slower: wall-clock bounds scale.
SLOW = 10.0 if os.environ.get("HIVEJAIL_VM") == "1" else 1.0
USR_LINKS = "  symlinks: {/bin: usr/bin, /lib: usr/lib, /lib64: usr/lib64, /sbin: usr/sbin}\n"


def cli_env(pkg_dir: Path | str, **extra: str) -> dict[str, str]:
    """Environment for a `hivejail` subprocess: our package, and the session's
    cgroup parent (tests/conftest.py) so nothing lands under the default one."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pkg_dir), **extra}
    if "HIVEJAIL_CGROUP_PARENT" in os.environ:
        env["HIVEJAIL_CGROUP_PARENT"] = os.environ["HIVEJAIL_CGROUP_PARENT"]
    return env


@dataclass
class Run:
    result: dict[str, Any]
    stdout: str
    stderr: str
    returncode: int
    workdir: Path

    @property
    def kv(self) -> dict[str, str]:
        out = {}
        for line in self.stdout.splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip()
        return out


def _remove_stale_test_users() -> None:
    """Users hjtest<pid> of test sessions that died without cleaning up."""
    import re
    for entry in pwd.getpwall():
        m = re.fullmatch(r"hjtest(\d+)", entry.pw_name)
        if m and entry.pw_name != TEST_USER and not os.path.exists(f"/proc/{m.group(1)}"):
            subprocess.run(["userdel", entry.pw_name], capture_output=True)
            subprocess.run(["groupdel", entry.pw_name], capture_output=True)


def ensure_test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        _remove_stale_test_users()
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", TEST_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(TEST_USER)


def remove_test_user() -> None:
    subprocess.run(["userdel", TEST_USER], capture_output=True)
    subprocess.run(["groupdel", TEST_USER], capture_output=True)


class Runner:
    """Runs payloads through the real CLI in one mode ("root" or "rootless")."""

    def __init__(self, mode: str, pkg_dir: Path | None = None, layers: str = "all") -> None:
        """layers: "all" = the whole jail (seccomp in errno mode, so a payload can
        report every refused call); "core" = namespaces, mounts, ids and
        capabilities alone (no seccomp, no Landlock), to prove they hold by themselves."""
        self.mode = mode
        self.layers = layers
        self.pkg_dir = pkg_dir or ROOT
        self.user = pwd.getpwnam(TEST_USER) if mode == "rootless" else None
        self.dirs: list[Path] = []

    def scratch(self) -> Path:
        d = Path(tempfile.mkdtemp(prefix="hjtest-"))
        os.chmod(d, 0o755)
        self.dirs.append(d)
        return d

    def close(self) -> None:
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)

    def policy_text(self, work: Path, extra: str = "", mounts: str = "") -> str:
        text = ("version: 1\nname: test\nfilesystem:\n  mounts:\n"
                "    - {source: /usr, target: /usr}\n"
                f"    - {{source: {work}/in, target: /job/in}}\n"
                f"    - {{source: {work}/out, target: /job/out, mode: rw}}\n")
        for line in textwrap.dedent(mounts).strip().splitlines():
            text += f"    {line}\n"
        text += USR_LINKS
        extra = textwrap.dedent(extra)
        if "audit:" not in extra:
            text += "audit: {dir: null}\n"
        if "seccomp:" not in extra:
            text += ("seccomp: {profile: none}\nlandlock: off\n" if self.layers == "core"
                     else "seccomp: {on_violation: errno}\n")
        if "limits:" not in extra:
            text += "limits: {require_cgroups: false}\n" if self.mode == "rootless" else ""
        return text + extra

    def run(self, code: str | None = None, *, argv: list[str] | None = None, extra: str = "",
            mounts: str = "", files: dict[str, str] | None = None, stdin: Any = None,
            pass_fds: tuple[int, ...] = (), env: dict[str, str] | None = None,
            timeout: float = 120, cli_args: list[str] | None = None, in_mode: int = 0o755) -> Run:
        work = self.scratch()
        (work / "in").mkdir()
        (work / "out").mkdir()
        if self.user:
            os.chown(work / "out", self.user.pw_uid, self.user.pw_gid)
        else:
            os.chmod(work / "out", 0o777)
        if code is not None:
            (work / "in" / "payload.py").write_text(textwrap.dedent(code))
        for name, text in (files or {}).items():
            (work / "in" / name).write_text(textwrap.dedent(text))
        for p in (work / "in").iterdir():
            os.chmod(p, 0o755)
        os.chmod(work / "in", in_mode)
        (work / "policy.yml").write_text(self.policy_text(work, extra, mounts))
        cmd = argv or ["/usr/bin/python3", "/job/in/payload.py"]
        cli = [VENV_PYTHON, "-m", "jail.cli", "exec", "--policy", str(work / "policy.yml"),
               "--result-file", str(work / "out-result.json"), *(cli_args or []), "--", *cmd]
        run_env = cli_env(self.pkg_dir, PYTHONDONTWRITEBYTECODE="1", **(env or {}))
        if self.user:
            os.chown(work, self.user.pw_uid, self.user.pw_gid)
            cli = ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
                   "--clear-groups", "--reset-env", "env", *[f"{k}={v}" for k, v in run_env.items()],
                   *cli]
        proc = subprocess.run(cli, env=run_env, stdin=stdin, capture_output=True, text=True,
                              timeout=timeout, pass_fds=pass_fds, cwd=str(work))
        rfile = work / "out-result.json"
        result = json.loads(rfile.read_text()) if rfile.exists() else {}
        return Run(result, proc.stdout, proc.stderr, proc.returncode, work)


def package_copy() -> Path:
    """A copy of the package the unprivileged test user can read."""
    d = Path(tempfile.mkdtemp(prefix="hjtest-pkg-"))
    for pkg in ("jail", "cgroups"):
        if (ROOT / pkg).exists():
            shutil.copytree(ROOT / pkg, d / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, dirnames, filenames in os.walk(d):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return d
