"""Resource limits, for real, on whichever cgroup driver this machine has.

The same test bodies run on the host (cgroup v1 / hybrid) from tests/, and
in the cgroup-v2 guest from integration/tests/test_jail_limits.py, which
imports this module.  Each test runs a real payload in a real jail and
checks the Result AND the host side (run cgroups gone, host responsive,
processes dead).  Every limit test fails when its limit is not applied.

Runs live below a parent of the tests' own (hjtest-<pid>, via
$HIVEJAIL_CGROUP_PARENT), capped at 512 tasks as a safety net, removed at
the end.  The IO test writes to $HIVEJAIL_SCRATCH_DIR (the guest's scratch
disk) or /var/tmp (a disk, not tmpfs, on the host).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cgroups  # noqa: E402
from cgroups import fs as cgfs  # noqa: E402
from cgroups.hybrid import MODE_ENV, PARENT_ENV  # noqa: E402
from jail import Jail  # noqa: E402

try:                        # the host: pytest put tests/ on sys.path
    import jailcli
    from conftest import policy_yaml
except ImportError:         # the guest imports this module as tests.test_limits
    from tests import jailcli
    from tests.conftest import policy_yaml

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs as root")

PARENT = f"hjtest-{os.getpid()}"
IN_VM = os.environ.get("HIVEJAIL_VM") == "1"
# How far past cpu_time the whole jail may get before the 50 ms poll kills it.  In the
# TCG guest on a busy host, the guest charges time the host deschedules a vCPU to the
# task that was running on it, and the supervisor's polls run late: more slack there.
CPU_OVERSHOOT_S = 0.8 if IN_VM else 0.4
SAFETY_PIDS = 512          # the tests' parent caps every test's processes, limit or not
PY = "/usr/bin/python3"    # inside the jail


# ---- fixtures and helpers ---------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def jail_cgroup_parent():
    """Every run of this module lives below hjtest-<pid>; nothing is left afterwards."""
    old = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = PARENT
    drv = cgroups.open_driver(PARENT)
    drv.ensure_parents()
    pids_home = drv.route.get("pids")
    if pids_home is not None and os.path.exists(pids_home.base + "/pids.max"):
        cgfs.write(pids_home.base + "/pids.max", str(SAFETY_PIDS))
    try:
        yield PARENT
    finally:
        left = runs_left()
        drv.reap()
        gone = drv.remove_parents()
        if drv.mode == "hybrid":                # test_cgroup.py also forces the v1 layout
            v1 = cgroups.open_driver(PARENT, "v1")
            v1.reap()
            v1.remove_parents()
        if old is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = old
    assert not left, f"run cgroups left behind: {left}"
    assert len(gone) == len(drv.homes), f"parents not removed: {set(drv.parents()) - set(gone)}"


@pytest.fixture
def figure(request):
    """figure(name, value): a measured figure, kept in the JUnit report's properties."""
    return lambda name, value: request.node.user_properties.append((name, value))


def driver():
    return cgroups.open_driver(PARENT)


def runs_left() -> list[str]:
    out = []
    for d in driver().parents():
        try:
            out += [f"{d}/{n}" for n in os.listdir(d) if n.startswith("run-")]
        except FileNotFoundError:
            pass
    return out


def alerts(result, kind: str) -> list[dict[str, Any]]:
    return [a for a in result.alerts if a["kind"] == kind]


@pytest.fixture
def jailrun(tmp_path, make_policy):
    """jailrun(argv, limits="memory: 100M", mounts="", during=fn) -> Result.

    stdout/stderr of the payload come back as result.stdout / result.stderr;
    result.cgroup holds the run cgroup's paths; ``during(ctx, cg, stop)``
    runs in a thread on the host while the payload runs (stop: an Event).
    """
    def run(argv: list[str], limits: str = "", mounts: str = "",
            during: Callable[..., Any] | None = None, options: dict | None = None):
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        os.chmod(out, 0o777)
        m = f"- {{source: {out}, target: /job/out, mode: rw}}\n" + textwrap.dedent(mounts)
        policy = make_policy(f"limits: {{{limits}}}\n" if limits else "", m)
        wrapped = ["/bin/sh", "-c", 'exec "$@" >/job/out/stdout 2>/job/out/stderr', "sh", *argv]
        seen: dict[str, Any] = {}
        stop = threading.Event()

        def started(ctx):
            cg = ctx.extra.get("cgroup")
            seen["paths"] = list(cg.paths) if cg else []
            if during is not None:
                t = threading.Thread(target=lambda: seen.setdefault("during", during(ctx, cg, stop)),
                                     daemon=True)
                t.start()
                seen["thread"] = t
        res = Jail(policy, options=options).run(wrapped, on_started=started)
        stop.set()
        if "thread" in seen:
            seen["thread"].join(30)
        res.stdout = (out / "stdout").read_text() if (out / "stdout").exists() else ""
        res.stderr = (out / "stderr").read_text() if (out / "stderr").exists() else ""
        res.cgroup = seen.get("paths", [])
        res.during = seen.get("during")
        return res
    return run


def assert_gone(res) -> None:
    assert res.cgroup, "the run had no cgroup"
    for p in res.cgroup:
        assert not os.path.exists(p), f"run cgroup left behind: {p}"
    assert runs_left() == []


def kv(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# ---- memory -------------------------------------------------------------------

def test_memory_limit_ends_as_memory_limit(jailrun, figure):
    res = jailrun([PY, "-c", "x = 'a' * (500 << 20); print('allocated', len(x))"],
                  limits="memory: 100M, wall_time: 60s")
    figure("memory_peak_bytes", res.memory_peak_bytes)
    figure("wall_s", res.wall_s)
    assert res.status == "memory_limit", (res.status, res.reason, res.stderr[-500:])
    assert "allocated" not in res.stdout
    assert "100M" in res.reason and "OOM" in res.reason
    assert res.exit_code == 128 + signal.SIGKILL
    assert 50 << 20 <= res.memory_peak_bytes <= 100 << 20, res.memory_peak_bytes
    (alert,) = alerts(res, "memory_limit")
    assert alert["oom_kills"] >= 1 and alert["limit_bytes"] == 100 << 20
    assert_gone(res)


def test_memory_below_the_limit_is_fine(jailrun):
    res = jailrun([PY, "-c", "x = 'a' * (40 << 20); print('allocated', len(x))"],
                  limits="memory: 100M")
    assert res.status == "ok", (res.reason, res.stderr)
    assert res.memory_peak_bytes >= 40 << 20
    assert not res.alerts
    assert_gone(res)


# ---- pids ---------------------------------------------------------------------

def _watch_host(ctx, cg, stop):
    """While the bomb runs: the run's task count, and how long the host takes to fork+exec."""
    pids_part = cg.route["pids"]
    most, slowest = 0, 0.0
    while not stop.is_set():
        n = pids_part.pids_current()
        most = max(most, n or 0)
        t = time.monotonic()
        subprocess.run(["/bin/true"], check=True)
        slowest = max(slowest, time.monotonic() - t)
        time.sleep(0.05)
    return most, slowest


@pytest.mark.slow
def test_fork_bomb_is_contained(jailrun, figure):
    res = jailrun(["/bin/bash", "-c", "bomb() { bomb | bomb & }; bomb; sleep 3; echo survived"],
                  limits="pids: 16, wall_time: 20s", during=_watch_host)
    most, slowest = res.during
    figure("status", res.status)
    figure("pids_peak", res.pids_peak)
    figure("max_tasks_seen", most)
    figure("host_true_max_s", round(slowest, 3))
    figure("refused_forks", alerts(res, "pids_limit")[0]["refused_forks"] if alerts(res, "pids_limit") else 0)
    (alert,) = alerts(res, "pids_limit")
    assert alert["refused_forks"] > 0 and alert["limit"] == 16
    assert res.pids_peak is not None and res.pids_peak <= 16, res.pids_peak
    assert most <= 16 + cgroups.base.JAIL_TASKS, f"{most} tasks in the run cgroup"
    assert slowest < 2.0, f"the host took {slowest:.2f}s to run /bin/true during the bomb"
    assert res.status in ("ok", "pids_limit"), (res.status, res.reason)
    assert_gone(res)


def test_refused_forks_fail_the_run_as_pids_limit(jailrun):
    code = textwrap.dedent("""\
        import os, time
        n = 0
        while True:
            if os.fork() == 0:
                time.sleep(2)
                os._exit(0)
            n += 1
            print("forked", n, flush=True)
        """)
    res = jailrun([PY, "-c", code], limits="pids: 16, wall_time: 30s")
    assert res.status == "pids_limit", (res.status, res.reason, res.stderr[-300:])
    assert "BlockingIOError" in res.stderr
    forked = [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("forked")]
    assert forked and max(forked) == 15, f"forked {max(forked or [0])} children under pids: 16"
    assert res.pids_peak == 16
    assert alerts(res, "pids_limit")[0]["refused_forks"] >= 1
    assert_gone(res)


# ---- cpus ---------------------------------------------------------------------

@pytest.mark.slow
def test_cpus_share(jailrun, figure):
    code = textwrap.dedent("""\
        import time
        t0, c0 = time.monotonic(), time.process_time()
        while time.monotonic() - t0 < 2.5:
            pass
        print(f"ratio={(time.process_time() - c0) / (time.monotonic() - t0):.4f}")
        """)
    res = jailrun([PY, "-c", code], limits="cpus: 0.2, wall_time: 60s")
    assert res.status == "ok", (res.reason, res.stderr)
    ratio = float(kv(res.stdout)["ratio"])
    figure("cpu_wall_ratio", ratio)
    assert abs(ratio - 0.2) <= 0.2 * 0.2, f"CPU/wall ratio {ratio:.3f} under cpus: 0.2"
    assert_gone(res)


# ---- cpu_time -------------------------------------------------------------------

def test_cpu_time_ends_as_cpu_limit(jailrun, figure):
    res = jailrun([PY, "-c", "while True: pass"], limits="cpu_time: 1s, wall_time: 30s")
    assert res.status == "cpu_limit", (res.status, res.reason)
    used = res.cpu_user_s + res.cpu_sys_s
    figure("cpu_used_s", round(used, 3))
    assert 0.95 <= used <= 1.0 + CPU_OVERSHOOT_S, f"{used:.2f}s of CPU under cpu_time: 1s"
    (alert,) = alerts(res, "cpu_limit")
    assert alert["limit_s"] == 1
    assert_gone(res)


def test_cpu_time_counts_the_whole_tree(jailrun, figure):
    """Two busy processes of 0.8 s each: each under 1 s (and under its RLIMIT_CPU of 2 s),
    together over it: only a limit on the whole tree stops them before both finish."""
    loop = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.8: pass\n"
    res = jailrun(["/bin/sh", "-c", '"$0" -c "$1" & "$0" -c "$1" & wait; echo both-done; sleep 5',
                   PY, loop], limits="cpu_time: 1s, wall_time: 30s")
    assert res.status == "cpu_limit", (res.status, res.reason, res.stderr)
    assert "both-done" not in res.stdout
    used = res.cpu_user_s + res.cpu_sys_s
    figure("cpu_used_s", round(used, 3))
    assert 0.95 <= used <= 1.0 + CPU_OVERSHOOT_S, f"{used:.2f}s of CPU under cpu_time: 1s"
    assert_gone(res)


# ---- io -------------------------------------------------------------------------

@pytest.fixture
def disk_dir():
    """A folder on a real disk: the guest's scratch disk, else /var/tmp."""
    base = os.environ.get("HIVEJAIL_SCRATCH_DIR") or "/var/tmp"
    from cgroups.io import device_of
    if device_of(base) is None:
        pytest.skip(f"{base} is not on a block device")
    d = tempfile.mkdtemp(prefix="hjtest-io-", dir=base)
    os.chmod(d, 0o777)
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


@pytest.mark.slow
def test_io_write_limit(jailrun, disk_dir, figure):
    from cgroups.io import device_of
    script = ('s=$(date +%s%N); dd if=/dev/zero of=/job/io/f bs=1M count=50 oflag=direct; '
              'e=$(date +%s%N); echo ms=$(( (e - s) / 1000000 ))')
    res = jailrun(["/bin/sh", "-c", script], limits="io: {write_bps: 5M}, wall_time: 60s",
                  mounts=f"- {{source: {disk_dir}, target: /job/io, mode: rw}}")
    assert res.status == "ok", (res.reason, res.stderr)
    seconds = int(kv(res.stdout)["ms"]) / 1000
    figure("dd_seconds", seconds)
    figure("io_write_bytes", res.io_write_bytes)
    assert 7.5 <= seconds <= 12.5, f"50 MB at 5 MB/s took {seconds:.1f}s (expected ~10s)"
    assert res.io_write_bytes >= 50 << 20, res.io_write_bytes
    assert f"io:{device_of(disk_dir)}" in res.layers["cgroups"]
    assert_gone(res)


def test_io_limit_on_a_path_without_disk_is_refused(jailrun, tmp_path):
    marker = tmp_path / "out" / "ran"
    res = jailrun(["/bin/sh", "-c", "echo yes > /job/out/ran"],
                  limits="io: {write_bps: 5M, devices: [/proc]}")
    assert res.status == "setup_error", res.status
    assert "/proc" in res.reason and "block device" in res.reason
    assert not marker.exists(), "the payload ran although its io limit could not be set"
    assert runs_left() == []


# ---- cleanup, reaping, concurrency ------------------------------------------------

SUPERVISOR = textwrap.dedent("""\
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from jail import Jail
    from jail.policy import parse_policy_text
    policy = parse_policy_text(sys.argv[2])
    def started(ctx):
        cg = ctx.extra["cgroup"]
        print(json.dumps({"paths": cg.paths}), flush=True)
    Jail(policy).run(["/bin/sleep", "300"], on_started=started)
    """)


@pytest.mark.slow
def test_sigkilled_supervisor_leaves_nothing_after_next_start(make_policy, tmp_path):
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(ROOT),
                            policy_yaml("limits: {memory: 64M, pids: 8}\n")],
                           stdout=subprocess.PIPE, text=True, env={**os.environ, PARENT_ENV: PARENT})
    try:
        line = sup.stdout.readline()
        info = json.loads(line)
        jail_pids = set()
        for d in info["paths"]:
            jail_pids.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
        assert len(jail_pids) >= 3, jail_pids          # intermediate, init, sleep
    finally:
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait()
        sup.stdout.close()
    # The PDEATHSIG chain takes the jail down with its supervisor…
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in jail_pids):
        time.sleep(0.05)
    alive = [p for p in jail_pids if os.path.exists(f"/proc/{p}")]
    assert not alive, f"jail processes survived their supervisor: {alive}"
    # …but nobody removed its cgroup: that is the reaper's job, at the next start.
    stale = info["paths"]
    assert all(os.path.isdir(p) for p in stale), "the stale run cgroup vanished by itself?"
    res = Jail(make_policy("limits: {memory: 64M}\n")).run(["/bin/true"])
    assert res.status == "ok", res.reason
    assert not [p for p in stale if os.path.exists(p)], "the next start did not reap the stale run"
    assert runs_left() == []


def test_stray_processes_are_killed_and_the_cgroup_removed():
    """kill_all/remove empty a run cgroup of processes that are not the jail's."""
    cg = driver().run_cgroup("feedface01")
    cg.create()
    cg.apply(cgroups.Spec(pids=8))
    strays = [subprocess.Popen(["/bin/sleep", "300"], start_new_session=True) for _ in range(3)]
    try:
        for p in strays:
            cg.add_process(p.pid)
        assert cg.populated()
        cg.remove()
        for p in strays:
            assert p.wait(timeout=5) == -signal.SIGKILL
        assert not any(os.path.exists(x) for x in cg.paths)
    finally:
        for p in strays:
            if p.poll() is None:
                p.kill()
                p.wait()
        cg.remove()


def test_freeze_stops_the_run_and_thaw_resumes_it():
    cg = driver().run_cgroup("f00dfeed02")
    cg.create()
    cg.apply(cgroups.Spec())
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        cg.add_process(busy.pid)
        time.sleep(0.3)
        assert cg.freeze(True)
        a = cg.cpu_usage_ns()
        time.sleep(0.4)
        b = cg.cpu_usage_ns()
        assert b - a < 20e6, f"a frozen run used {(b - a) / 1e6:.0f} ms of CPU"
        assert cg.freeze(False)
        time.sleep(0.4)
        c = cg.cpu_usage_ns()
        assert c - b > 100e6, "the thawed run did not run"
    finally:
        cg.remove()
        busy.wait(timeout=5)


def test_reaper_takes_only_runs_of_dead_supervisors():
    from cgroups import reaper
    drv = driver()
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()
    live = subprocess.Popen(["/bin/sleep", "300"], start_new_session=True)
    stray = subprocess.Popen(["/bin/sleep", "300"], start_new_session=True)
    live_start = reaper.proc_starttime(live.pid)
    names = {
        "dead": f"run-{dead.pid}.{reaper.proc_starttime(os.getpid())}-aaaaaa",
        "live": f"run-{live.pid}.{live_start}-bbbbbb",
        "reused": f"run-{live.pid}.{live_start + 1}-cccccc",   # same pid, another process
    }
    made = {k: drv._run(n) for k, n in names.items()}
    others = [os.path.join(b, n) for b in drv.parents() for n in ("run-foo", "keep-me")]
    try:
        for cg in made.values():
            cg.create()
        for d in others:
            os.mkdir(d)
        made["dead"].add_process(stray.pid)
        for n in names.values():
            reaper.closed(n)        # made here, but not by a supervisor: only names count
        reaped = drv.reap()
        assert sorted(reaped) == sorted([names["dead"], names["reused"]])
        assert stray.wait(timeout=5) == -signal.SIGKILL, "the stale run's process survived"
        assert all(not os.path.exists(p) for k in ("dead", "reused") for p in made[k].paths)
        assert all(os.path.isdir(p) for p in made["live"].paths), "a live supervisor's run was reaped"
        assert all(os.path.isdir(d) for d in others), "the reaper touched a name not its own"
    finally:
        for d in others:
            if os.path.isdir(d):
                os.rmdir(d)
        made["live"].created = [p for p in made["live"].parts if os.path.isdir(p.path)]
        made["live"].remove()
        for p in (live, stray):
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_twenty_concurrent_runs_each_with_its_own_limits(make_policy):
    """Half the runs get 24M and fail to allocate 40M; the other half get 96M and succeed."""
    n = 20
    results: list[Any] = [None] * n
    seen: list[dict[str, Any]] = [{} for _ in range(n)]
    barrier = threading.Barrier(n, timeout=60)

    def one(i: int) -> None:
        mem = "24M" if i % 2 else "96M"
        policy = make_policy(f"limits: {{memory: {mem}, pids: {10 + i}, wall_time: 60s}}\n")

        def started(ctx):
            cg = ctx.extra["cgroup"]
            seen[i] = {"name": cg.name, "paths": cg.paths, "limits": cg.read_limits()}
            try:
                barrier.wait()          # all twenty are alive at once
            except threading.BrokenBarrierError:
                seen[i]["broken"] = True
        results[i] = Jail(policy).run(
            ["/bin/sh", "-c", "sleep 0.5; dd if=/dev/zero of=/dev/null bs=40M count=1 2>/dev/null"],
            on_started=started)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(s.get("broken") for s in seen), "not all twenty runs were alive at once"
    assert len({s["name"] for s in seen}) == n
    for i, (res, s) in enumerate(zip(results, seen)):
        expect_mem = (24 if i % 2 else 96) << 20
        assert s["limits"]["memory"] == expect_mem and s["limits"]["pids"] == 10 + i, (i, s)
        want = "memory_limit" if i % 2 else "ok"
        assert res.status == want, (i, res.status, res.reason)
        assert all(not os.path.exists(p) for p in s["paths"])
    assert runs_left() == []


# ---- the record --------------------------------------------------------------------

def test_result_file_carries_usage_and_alerts():
    runner = jailcli.Runner("root")
    try:
        run = runner.run("x = 'a' * (500 << 20)\n", extra="limits: {memory: 100M, pids: 8}\n",
                         env={PARENT_ENV: PARENT})
    finally:
        runner.close()
    r = run.result
    assert run.returncode == 137, run.stderr
    assert r["status"] == "memory_limit" and r["exit_code"] == 137 and r["signal"] == 9
    for key in ("wall_s", "cpu_user_s", "cpu_sys_s"):
        assert isinstance(r[key], float)
    for key in ("memory_peak_bytes", "io_read_bytes", "io_write_bytes", "pids_peak"):
        assert isinstance(r[key], int), key
    assert 50 << 20 <= r["memory_peak_bytes"] <= 100 << 20
    assert r["pids_peak"] >= 1
    (alert,) = [a for a in r["alerts"] if a["kind"] == "memory_limit"]
    assert alert["severity"] == "warning" and alert["oom_kills"] >= 1
    assert runs_left() == []


# ---- rootless ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def rootless_pkg():
    """The unprivileged test user and a copy of the package it can read."""
    import pwd
    import shutil
    try:
        pwd.getpwnam(jailcli.TEST_USER)
        created = False
    except KeyError:
        created = True
    user = jailcli.ensure_test_user()
    pkg = jailcli.package_copy()
    yield user, pkg
    shutil.rmtree(pkg, ignore_errors=True)
    if created:
        jailcli.remove_test_user()


def test_rootless_without_delegation_runs_with_rlimits_or_is_refused(rootless_pkg):
    user, pkg = rootless_pkg
    runner = jailcli.Runner("rootless", pkg)
    try:
        soft = runner.run(argv=["/bin/true"], extra="limits: {memory: 64M}\n")
        hard = runner.run(argv=["/bin/true"], extra="limits: {memory: 64M, require_cgroups: true}\n")
    finally:
        runner.close()
    assert soft.returncode == 0 and soft.result["status"] == "ok", soft.stderr
    (alert,) = [a for a in soft.result["alerts"] if a["kind"] == "cgroups_unavailable"]
    assert "rlimits only" in alert["enforced"] and "delegat" in alert["fix"].lower()
    assert soft.result["layers"]["cgroups"] is None
    assert hard.returncode == 125 and hard.result["status"] == "setup_error", hard.stderr
    assert "not delegated" in hard.result["reason"] and "require_cgroups" in hard.result["reason"]


def test_rootless_runs_in_a_delegated_cgroup(rootless_pkg):
    """Hand the test user a cgroup of ours (as systemd's Delegate=yes does); a rootless
    supervisor started in it puts its runs below it, with real limits."""
    user, pkg = rootless_pkg
    drv = driver()
    made = []
    runner = jailcli.Runner("rootless", pkg)
    try:
        for home in drv.homes:
            d = os.path.join(home.h.mount, f"{PARENT}-deleg")
            os.mkdir(d)
            made.append(d)
            for f in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads", "tasks"):
                if os.path.exists(os.path.join(d, f)):
                    os.chown(os.path.join(d, f), user.pw_uid, user.pw_gid)
        work = runner.scratch()
        (work / "in").mkdir()
        (work / "out").mkdir()
        os.chown(work, user.pw_uid, user.pw_gid)
        os.chown(work / "out", user.pw_uid, user.pw_gid)
        (work / "policy.yml").write_text(runner.policy_text(
            work, "limits: {memory: 100M, pids: 16, require_cgroups: true}\n"))
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pkg), "PYTHONDONTWRITEBYTECODE": "1"}
        if os.environ.get(MODE_ENV):            # the layout these cgroups were made for
            env[MODE_ENV] = os.environ[MODE_ENV]
        cli = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
               "--reset-env", "env", *[f"{k}={v}" for k, v in env.items()],
               jailcli.VENV_PYTHON, "-m", "jail.cli", "exec", "--policy", str(work / "policy.yml"),
               "--result-file", str(work / "result.json"), "--",
               PY, "-c", "x = 'a' * (500 << 20)"]
        join = 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 99; done; ' \
               'while [ "$1" != -- ]; do shift; done; shift; exec "$@"'
        procs = [os.path.join(d, "cgroup.procs") for d in made]
        proc = subprocess.run(["/bin/sh", "-c", join, "sh", *procs, "--", *cli],
                              capture_output=True, text=True, timeout=120, cwd=str(work))
        assert proc.returncode == 137, (proc.returncode, proc.stderr)
        result = json.loads((work / "result.json").read_text())
        assert result["status"] == "memory_limit", result["reason"]
        assert result["layers"]["cgroups"].endswith(" delegated")
        for d in made:
            assert not [n for n in os.listdir(d) if n.startswith("run-")], f"runs left in {d}"
        for home, d in zip(drv.homes, made):
            if home.h.version == 2 and home.concerns & {"memory", "pids", "cpu", "io"}:
                # no internal processes: the supervisor moved itself into a leaf first
                assert os.path.isdir(os.path.join(d, "supervisor"))
                assert "memory" in Path(d, "cgroup.subtree_control").read_text().split()
    finally:
        runner.close()
        for d in made:
            leaf = os.path.join(d, "supervisor")
            if os.path.isdir(leaf):
                os.rmdir(leaf)
            os.rmdir(d)
