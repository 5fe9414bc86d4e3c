"""The audit log writer: init, preflight, append, crash recovery, status.

One append, under an exclusive flock on D/lock so concurrent runs serialise:

  1. load state: the last line of checkpoints.jsonl, verified with our own
     key, and the tree's right edge from the cache, checked to fold to that
     checkpoint's root (rebuilt from log.jsonl if not; refused if the log no
     longer matches).  Because every new tree is built on that checked edge,
     the writer never signs a checkpoint inconsistent with its last one;
  2. recover if the log has bytes past the last checkpoint (see below);
  3. one write + fsync of the canonical record line to log.jsonl: from here
     the record is durable;
  4. append the new hashes/offset to the caches (no fsync: derived data);
  5. sign the checkpoint, append it to checkpoints.jsonl + fsync, then
     replace D/checkpoint (a convenience copy, renamed without fsync).
A failure in 3 means the record is not durable; a failure in 4-5 means it is
durable but unsigned.  Both raise AuditError (fail closed: the run is
UNAUDITED); a later writer adopts the unsigned line in a recovery record.

Recovery never truncates (the evidence files are append-only): lines found
after the last checkpoint are adopted, a torn last line is closed with a
newline, a torn checkpoints.jsonl line likewise, and one `recovery` record
names each of them (seq, length, SHA-256) before the next checkpoint covers
them.  `verify` accepts a malformed line only when a recovery record names it
exactly, and reports every adopted line as a warning: it was never signed
when written, so it could also have been planted by someone who could write
the folder.  At most MAX_ADOPT lines are adopted; more means tampering, and
the writer refuses (fail closed) until an operator has looked.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import stat
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from . import AuditError
from . import files as F
from .cache import TreeCache, rebuild
from .merkle import EMPTY_ROOT, CompactRange, leaf_hash
from .record import encode, run_record

DEFAULT_LOCK_TIMEOUT_S = 10.0
MAX_ADOPT = 16

#: Test hook: called as _fault(stage, **info) at each step of a commit, so a
#: test can kill the writer there.  Always None in production.
_fault: Optional[Callable[..., None]] = None


def _now_us() -> int:
    return time.time_ns() // 1000


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def default_origin() -> str:
    """<host>/hivejail-audit/<random>: unique per log, so records cannot be
    spliced between logs of one host unnoticed."""
    host = re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname()) or "localhost"
    return f"{host}/hivejail-audit/{secrets.token_hex(4)}"


def init_log(folder: str, origin: Optional[str] = None) -> str:
    """Create the audit folder, key pair and the signed size-0 checkpoint.

    Returns the verifier key, which the operator must keep outside the folder:
    `verify` only trusts a key it is given.
    """
    from .checkpoint import Checkpoint, history_line, sign_checkpoint
    from .note import generate, valid_name

    d = os.path.abspath(folder)
    for name in (F.KEY, F.LOG, F.CHECKPOINTS):
        if os.path.lexists(os.path.join(d, name)):
            raise AuditError(f"{d} already holds an audit log ({name} exists); refusing to overwrite it")
    origin = origin or default_origin()
    if not valid_name(origin):
        raise AuditError(f"origin {origin!r} is not a valid key name: no spaces or '+', e.g. example.org/hivejail-audit")
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        signer = generate(origin)
        _create(os.path.join(d, F.KEY), (signer.skey + "\n").encode(), 0o600)
        for name in (F.LOG, F.TREE, F.INDEX):
            _create(os.path.join(d, name), b"", 0o600)
        note = sign_checkpoint(Checkpoint(origin, 0, EMPTY_ROOT), signer)
        _create(os.path.join(d, F.CHECKPOINTS), history_line(note) + b"\n", 0o600)
        F.atomic_write(os.path.join(d, F.LATEST), note, 0o644)
        F.fsync_dir(d)
    except OSError as e:
        raise AuditError(f"cannot create the audit log in {d}: {e.strerror} ({e.filename or d})") from None
    for name in F.EVIDENCE:
        F.set_append_only(os.path.join(d, name))
    return signer.verifier().vkey


def _create(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        F.write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class _State:
    """What the writer knows after loading, under the lock."""

    def __init__(self, size: int, root: bytes, cr: CompactRange, log_end: int, log_tail: bytes,
                 cp_tail: bytes) -> None:
        self.size = size            # records covered by the last signed checkpoint
        self.root = root
        self.cr = cr                # right edge of that tree
        self.log_end = log_end      # byte offset where the covered records end
        self.log_tail = log_tail    # bytes of log.jsonl past log_end (crash leftovers)
        self.cp_tail = cp_tail      # bytes of checkpoints.jsonl past its last newline
        self.recovered: Optional[int] = None  # seq of the recovery record written while loading


class AuditLog:
    """Appends signed records to one audit folder.  Cheap to construct; the key
    and files are checked by preflight() and append()."""

    def __init__(self, folder: str) -> None:
        self.dir = os.path.abspath(folder)
        self.lock_timeout_s = DEFAULT_LOCK_TIMEOUT_S
        self._signer: Any = None
        self._verifier: Any = None
        self._mutex = threading.Lock()

    @classmethod
    def open(cls, folder: str) -> "AuditLog":
        return cls(folder)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @property
    def origin(self) -> str:
        self._setup()
        return self._signer.name

    # -- checks -------------------------------------------------------------------------------

    def _setup(self) -> None:
        """Folder, key and evidence files exist with safe modes; load the key."""
        d = self.dir
        init_hint = f"run `hivejail audit init --dir {d}`"
        try:
            dst = os.stat(d)
        except FileNotFoundError:
            raise AuditError(f"audit dir {d} does not exist: {init_hint}") from None
        except OSError as e:
            raise AuditError(f"cannot reach audit dir {d}: {e.strerror}") from None
        if not stat.S_ISDIR(dst.st_mode):
            raise AuditError(f"audit dir {d} is not a folder")
        if dst.st_mode & 0o022:
            raise AuditError(f"audit dir {d} is writable by group or others (mode {dst.st_mode & 0o777:04o}): "
                             f"run `chmod 700 {d}`")
        key = self.path(F.KEY)
        try:
            kst = os.lstat(key)
        except FileNotFoundError:
            raise AuditError(f"audit dir {d} has no signing key ({key}): {init_hint}") from None
        if not stat.S_ISREG(kst.st_mode):
            raise AuditError(f"signing key {key} is not a regular file")
        if kst.st_mode & 0o077:
            raise AuditError(f"signing key {key} has mode {kst.st_mode & 0o777:04o}; it must be 0600: run `chmod 600 {key}`")
        if kst.st_uid != os.geteuid():
            raise AuditError(f"signing key {key} is owned by uid {kst.st_uid}, not by the writer (uid {os.geteuid()}): "
                             f"run `chown {os.geteuid()} {key}`")
        for name in F.EVIDENCE:
            if not os.path.isfile(self.path(name)):
                raise AuditError(f"{self.path(name)} is missing: the log was removed or never initialised; restore it "
                                 "from a copy (never re-init over an existing log)")
        if self._signer is None:
            from .note import NoteError, parse_skey

            try:
                with open(key, encoding="utf-8") as f:
                    self._signer = parse_skey(f.read().strip())
            except (OSError, UnicodeDecodeError, NoteError) as e:
                raise AuditError(f"cannot load signing key {key}: {e}") from None
            self._verifier = self._signer.verifier()

    @contextmanager
    def _locked(self, timeout_s: Optional[float]) -> Iterator[None]:
        lock = F.FileLock(self.path(F.LOCK))
        lock.acquire(self.lock_timeout_s if timeout_s is None else timeout_s)
        try:
            yield
        finally:
            lock.release()

    def preflight(self, min_free_bytes: int, lock_timeout_s: float) -> None:
        """Raise AuditError unless a record could be made durable now: folder and
        key in place, filesystem writable, `min_free_bytes` free, lock obtainable
        within `lock_timeout_s`, and the log in a state the writer can extend
        (crash leftovers are recovered here, before the run)."""
        self._setup()
        self.lock_timeout_s = lock_timeout_s
        try:
            vfs = os.statvfs(self.dir)
        except OSError as e:
            raise AuditError(f"cannot stat the filesystem of {self.dir}: {e.strerror}") from None
        if vfs.f_flag & os.ST_RDONLY:
            raise AuditError(f"audit dir {self.dir} is on a read-only filesystem: remount it read-write or set "
                             "audit.dir to a writable folder")
        for name in F.EVIDENCE:
            try:
                os.close(os.open(self.path(name), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
            except OSError as e:
                raise AuditError(f"cannot open {self.path(name)} for appending: {e.strerror}") from None
        free = vfs.f_bavail * vfs.f_frsize
        if free < min_free_bytes:
            raise AuditError(f"only {_mib(free)} free on the filesystem of {self.dir}, below the audit reserve of "
                             f"{_mib(min_free_bytes)}: free space there or lower the reserve")
        with self._mutex, self._locked(lock_timeout_s):
            self._state(recover=True)
        for name in F.EVIDENCE:
            F.set_append_only(self.path(name))

    # -- state and recovery ---------------------------------------------------------------------

    def _state(self, recover: bool) -> _State:
        """Load and check the writer state; call with the lock held."""
        from .checkpoint import CheckpointError, open_checkpoint, parse_history_line

        cps = self.path(F.CHECKPOINTS)
        try:
            last, cp_tail = F.read_last_line(cps)
        except OSError as e:
            raise AuditError(f"cannot read {cps}: {e.strerror}") from None
        if not last:
            raise AuditError(f"{cps} holds no complete checkpoint: the log was emptied or damaged; "
                             "run `hivejail audit verify`")
        try:
            cp = open_checkpoint(parse_history_line(last), self._verifier)
        except CheckpointError as e:
            raise AuditError(f"{cps}: the last checkpoint is not valid for this log's key ({e}): the file was "
                             "altered; run `hivejail audit verify` (the writer refuses to continue)") from None
        log = self.path(F.LOG)
        try:
            with open(log, "rb") as lf, TreeCache(self.dir) as cache:
                if cache.valid_for(cp.size, cp.root, lf.fileno()):
                    cr, log_end = cache.compact_range(cp.size), cache.end(cp.size - 1)
                    cache.trim(cp.size)
                else:
                    cache.close()
                    tree, ends = rebuild(self.dir, cp.size, cp.root)
                    cr, log_end = tree.range, (ends[-1] if ends else 0)
                log_size = os.fstat(lf.fileno()).st_size
                tail = os.pread(lf.fileno(), log_size - log_end, log_end) if log_size > log_end else b""
        except OSError as e:
            raise AuditError(f"cannot read the audit log in {self.dir}: {e.strerror} ({e.filename or log})") from None
        if log_size < log_end:
            raise AuditError(f"{log} is shorter than the last signed checkpoint covers: records were removed; "
                             "run `hivejail audit verify`")
        st = _State(cp.size, cp.root, cr, log_end, tail, cp_tail)
        if tail or cp_tail:
            if not recover:
                raise AuditError(f"{log} has data after the last checkpoint: run `hivejail audit recover --dir {self.dir}`")
            self._recover(st)
        return st

    def _recover(self, st: _State) -> int:
        """Adopt leftovers of a stopped writer with one recovery record; returns its seq."""
        complete = st.log_tail.split(b"\n")
        torn = complete.pop()
        if len(complete) > MAX_ADOPT:
            raise AuditError(f"{self.path(F.LOG)} has {len(complete)} unsigned records after the last checkpoint "
                             f"(seq {st.size} on): more than a crash leaves; refusing to adopt them; run "
                             "`hivejail audit verify` and investigate")
        seq = st.size
        adopted = [{"seq": seq + i, "sha256": hashlib.sha256(line).hexdigest()} for i, line in enumerate(complete)]
        rec: dict[str, Any] = {"v": 1, "type": "recovery", "origin": self._signer.name, "after_checkpoint": st.size,
                               "adopted": adopted, "torn": None, "checkpoints_torn": None}
        leftovers = list(complete)
        reasons = []
        if adopted:
            reasons.append(f"adopted {len(adopted)} record(s) written after checkpoint {st.size} but never signed")
        if torn:
            rec["torn"] = {"seq": seq + len(complete), "bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()}
            leftovers.append(torn)
            reasons.append(f"closed a torn line of {len(torn)} bytes at seq {seq + len(complete)}")
        if st.cp_tail:
            cps = self.path(F.CHECKPOINTS)
            try:
                fd = os.open(cps, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                try:
                    F.write_all(fd, b"\n")
                    os.fsync(fd)
                finally:
                    os.close(fd)
                with open(cps, "rb") as f:
                    line_no = f.read().count(b"\n")
            except OSError as e:
                raise AuditError(f"cannot repair {cps}: {e.strerror}") from None
            rec["checkpoints_torn"] = {"line": line_no, "bytes": len(st.cp_tail),
                                       "sha256": hashlib.sha256(st.cp_tail).hexdigest()}
            reasons.append(f"closed a torn checkpoint line {line_no} of {len(st.cp_tail)} bytes")
            st.cp_tail = b""
        rec_seq = seq + len(leftovers)
        rec.update(seq=rec_seq, logged_at_us=_now_us(),
                   reason="a writer stopped mid-append: " + "; ".join(reasons) if reasons else "recovery")
        self._commit(st, [encode(rec)], written=leftovers, prefix=b"\n" if torn else b"")
        st.recovered = rec_seq
        return rec_seq

    def recover(self, lock_timeout_s: Optional[float] = None) -> Optional[int]:
        """Explicit recovery (`hivejail audit recover`); returns the recovery record's seq, or None."""
        self._setup()
        with self._mutex, self._locked(lock_timeout_s):
            return self._state(recover=True).recovered

    # -- appending ------------------------------------------------------------------------------

    def append(self, record: dict, lock_timeout_s: Optional[float] = None) -> int:
        """Append a run's result record; returns its seq once the record is durable
        and covered by a signed checkpoint.  Raises AuditError otherwise."""
        try:
            body = run_record(record)
        except TypeError as e:
            raise AuditError(f"cannot audit this result: {e}") from None
        self._setup()
        with self._mutex, self._locked(lock_timeout_s):
            st = self._state(recover=True)
            seq = st.cr.size
            line = encode(dict(body, seq=seq, origin=self._signer.name, logged_at_us=_now_us()))
            self._commit(st, [line], what=f"run {body.get('id')!s}")
        return seq

    def _append_many(self, records: list[dict], sync: bool = True) -> list[int]:
        """Bench/test helper: append many records under one lock with one write
        and one fsync per file, still signing one checkpoint per record (the
        file contents are what `append` would have produced)."""
        self._setup()
        with self._mutex, self._locked(None):
            st = self._state(recover=True)
            lines = []
            for i, r in enumerate(records):
                lines.append(encode(dict(run_record(r), seq=st.cr.size + i, origin=self._signer.name,
                                         logged_at_us=_now_us())))
            first = st.cr.size
            self._commit(st, lines, every=True, sync=sync)
        return list(range(first, first + len(records)))

    def _commit(self, st: _State, lines: list[bytes], *, written: Optional[list[bytes]] = None, prefix: bytes = b"",
                what: str = "record", every: bool = False, sync: bool = True) -> None:
        """Write `lines` (after `prefix`), extend the tree by the already `written`
        lines and `lines`, then sign and publish the checkpoint(s)."""
        from .checkpoint import Checkpoint, history_line, sign_checkpoint

        log = self.path(F.LOG)
        first_seq = st.cr.size + len(written or [])
        data = prefix + b"".join(line + b"\n" for line in lines)
        try:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as e:
            raise AuditError(f"cannot open {log} for appending: {e.strerror}; the {what} (seq {first_seq}) is not durable") from None
        try:
            if os.fstat(fd).st_size != st.log_end + len(st.log_tail):
                raise AuditError(f"{log} changed while this writer held the lock: something appends without the lock; "
                                 f"the {what} was not written")
            if _fault:
                _fault("log-write", fd=fd, data=data)
            F.write_all(fd, data)
            if sync:
                os.fsync(fd)
        except OSError as e:
            raise AuditError(f"cannot append to {log}: {e.strerror}; the {what} (seq {first_seq}) is not durable") from None
        finally:
            os.close(fd)
        if _fault:
            _fault("log-synced")
        unsigned = f"the {what} (seq {first_seq}) is durable but not covered by a signed checkpoint; the next writer will adopt it"
        try:
            hashes: list[bytes] = []
            ends: list[int] = []
            notes: list[bytes] = []
            end = st.log_end
            for line in (written or []) + lines:
                hashes.extend(st.cr.append(leaf_hash(line)))
                end += len(line) + 1
                ends.append(end)
                if every:
                    notes.append(sign_checkpoint(Checkpoint(self._signer.name, st.cr.size, st.cr.root()), self._signer))
            TreeCache(self.dir).append(hashes, ends)
            if _fault:
                _fault("cache-written")
            if not every:
                notes.append(sign_checkpoint(Checkpoint(self._signer.name, st.cr.size, st.cr.root()), self._signer))
            cps = self.path(F.CHECKPOINTS)
            fd = os.open(cps, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                cp_data = b"".join(history_line(n) + b"\n" for n in notes)
                if _fault:
                    _fault("checkpoint-write", fd=fd, data=cp_data)
                F.write_all(fd, cp_data)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if _fault:
                _fault("checkpoint-appended")
            # D/checkpoint is a convenience copy for witnesses: replaced by
            # rename, not fsynced (checkpoints.jsonl is the durable record);
            # after a crash it may be stale or empty until the next append.
            tmp = self.path(F.LATEST + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                F.write_all(fd, notes[-1])
            finally:
                os.close(fd)
            os.replace(tmp, self.path(F.LATEST))
        except OSError as e:
            raise AuditError(f"{e.filename or self.dir}: {e.strerror}: {unsigned}") from None
        st.size, st.root = st.cr.size, st.cr.root()
        st.log_end, st.log_tail = end, b""


def status(folder: str) -> dict:
    """What `hivejail doctor` and `hivejail audit status` report about a folder
    (no verification: that needs the operator's key)."""
    d = os.path.abspath(folder)
    out: dict[str, Any] = {"dir": d, "initialised": False, "origin": None, "size": None, "append_only": {},
                           "key_mode": None, "problems": []}
    if not os.path.isdir(d):
        out["problems"].append(f"{d} does not exist: run `hivejail audit init --dir {d}`")
        return out
    key = os.path.join(d, F.KEY)
    try:
        kst = os.lstat(key)
        out["key_mode"] = f"{kst.st_mode & 0o777:04o}"
        if kst.st_mode & 0o077:
            out["problems"].append(f"{key} has mode {out['key_mode']}: run `chmod 600 {key}`")
    except OSError:
        out["problems"].append(f"{key} is missing: run `hivejail audit init --dir {d}`")
    for name in F.EVIDENCE:
        p = os.path.join(d, name)
        try:
            flag = F.get_append_only(p)
        except OSError as e:
            out["append_only"][name] = None
            out["problems"].append(f"{p}: {e.strerror}")
            continue
        out["append_only"][name] = flag
        if flag is None:
            out["problems"].append(f"{p}: the filesystem has no append-only flag")
        elif not flag:
            out["problems"].append(f"{p} is not append-only (needs root and CAP_LINUX_IMMUTABLE: `chattr +a {p}`)")
    try:
        last, _ = F.read_last_line(os.path.join(d, F.CHECKPOINTS))
        from .checkpoint import parse_history_line, parse_text

        note = parse_history_line(last)
        cp = parse_text(note[: note.rfind(b"\n\n") + 1])
        out.update(initialised=True, origin=cp.origin, size=cp.size)
    except Exception as e:  # status must describe, never raise
        out["problems"].append(f"cannot read the last checkpoint: {e}")
    return out
