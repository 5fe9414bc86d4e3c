"""`hivejail doctor`: what this host offers the jail, and why not when it doesn't.

Every check is measured, not guessed: namespaces are tried with unshare in a
forked child, seccomp actions read from the kernel, Landlock's ABI asked of
the kernel.  Each entry says ok / missing, a detail, and how to fix it.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

from . import libc

NS_FLAGS = {"user": libc.CLONE_NEWUSER, "mnt": libc.CLONE_NEWNS, "pid": libc.CLONE_NEWPID,
            "net": libc.CLONE_NEWNET, "ipc": libc.CLONE_NEWIPC, "uts": libc.CLONE_NEWUTS,
            "cgroup": libc.CLONE_NEWCGROUP}


def _try_in_child(fn: Callable[[], None]) -> str | None:
    """Run fn in a forked child; None if it worked, else the error text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            fn()
            os._exit(0)
        except OSError as e:
            os.write(w, str(e).encode()[:500])
            os._exit(1)
    os.close(w)
    msg = os.read(r, 600).decode(errors="replace")
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return None if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else (msg or "failed")


def check_namespaces() -> dict[str, Any]:
    out: dict[str, Any] = {}
    rootless = os.geteuid() != 0
    for name, flag in NS_FLAGS.items():
        flags = flag if name == "user" else (libc.CLONE_NEWUSER | flag)
        err = _try_in_child(lambda f=flags: libc.unshare(f))
        out[name] = {"ok": err is None, "detail": err or "works"}
        if err and name == "user":
            out[name]["fix"] = ("enable unprivileged user namespaces: sysctl "
                                "kernel.unprivileged_userns_clone=1 / user.max_user_namespaces>0"
                                if rootless else "the kernel lacks CONFIG_USER_NS")
    return out


def check_idmaps() -> dict[str, Any]:
    import pwd
    from .userns import subid_range
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    sub = subid_range(user, uid, "/etc/subuid")
    tools = bool(shutil.which("newuidmap") and shutil.which("newgidmap"))
    if uid == 0:
        mode = "root: identity map of 0 and the policy's run_as ids"
    else:
        mode = "rootless: single-id map (run_as inside = you outside)"
    return {"ok": True, "mode": mode, "subuid_range": sub, "newuidmap": tools,
            "detail": ("subordinate ids are granted but not used (the payload must be able to "
                       "write your rw folders)" if sub else "no subordinate ids (not needed)")}


def _optional(module: str, fn: str = "describe") -> dict[str, Any]:
    import importlib
    try:
        return getattr(importlib.import_module(module), fn)()
    except (ImportError, AttributeError) as e:
        return {"ok": False, "detail": f"not available in this build ({e})"}
    except Exception as e:  # noqa: BLE001 - doctor reports, never crashes
        return {"ok": False, "detail": f"check failed: {e}"}


def check_audit() -> dict[str, Any]:
    """The default audit folder: initialised? append-only flags honoured?"""
    from .policy import default_audit_dir
    folder = default_audit_dir()
    try:
        from .audit import status
        st = status(folder)
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "dir": folder, "detail": f"cannot inspect: {e}"}
    if not st.get("initialised"):
        return {"ok": False, "dir": folder, "detail": "no audit log yet",
                "fix": f"hivejail audit init --dir {folder} (keep the printed verifier key elsewhere)"}
    flags = st.get("append_only", {})
    return {"ok": not st.get("problems"), "dir": folder, "size": st.get("size"),
            "append_only": flags, "key_mode": st.get("key_mode"),
            "detail": "; ".join(st.get("problems") or []) or "initialised"}


def collect() -> dict[str, Any]:
    return {
        "euid": os.geteuid(),
        "kernel": os.uname().release,
        "namespaces": check_namespaces(),
        "id_maps": check_idmaps(),
        "cgroups": _optional("cgroups"),
        "seccomp": _optional("jail.seccomp"),
        "landlock": _optional("jail.landlock"),
        "network": _optional("jail.netallow"),
        "audit": check_audit(),
    }


def _line(name: str, info: dict[str, Any]) -> str:
    mark = "ok " if info.get("ok") else "NO "
    text = f"  [{mark}] {name}: {info.get('detail', '')}"
    if info.get("fix") and not info.get("ok"):
        text += f"\n          fix: {info['fix']}"
    return text


def main(json_output: bool = False) -> int:
    report = collect()
    if json_output:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"hivejail doctor — kernel {report['kernel']}, "
          f"{'root' if report['euid'] == 0 else 'rootless (uid %d)' % report['euid']}")
    print("namespaces:")
    for name, info in report["namespaces"].items():
        print(_line(name, info))
    print("user ids:")
    print(_line("id maps", {**report["id_maps"], "detail": report["id_maps"]["mode"]
                           + "; " + report["id_maps"]["detail"]}))
    for section in ("cgroups", "seccomp", "landlock", "network", "audit"):
        print(f"{section}:")
        print(_line(section, report[section]))
        for k, v in report[section].items():
            if k not in ("ok", "detail", "fix"):
                print(f"          {k}: {v}")
    return 0
