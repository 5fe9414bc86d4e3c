"""Full verification of an audit folder against an operator-held verifier key.

What is checked, and why each check exists:
  * every log line is UTF-8, one JSON object, no duplicate key, byte-equal to
    its RFC 8785 form (re-encoding or key games are tamper);
  * line i has seq i and this log's origin (deletion, reordering, splicing);
  * every stored checkpoint is compared with the tree: the Merkle root of the
    first n lines must equal the root of every checkpoint of size n (edits),
    none may be larger than the log (tail truncation), come after a larger
    one, or disagree with another of its size (fork);
  * the newest checkpoint that agrees with the log must be signed by the
    given key, and must cover every line (records appended unsigned);
  * the optional trusted checkpoint (kept outside the folder) is matched, so
    truncating log AND checkpoints below it is caught.

Signatures.  A checkpoint that agrees with the tree says nothing the signed
newest checkpoint does not already bind (its root commits to every line), so
by default only checkpoints that carry information are signature-checked:
every one that disagrees with the log (to tell a forged line from a signed
fork or truncation), and the newest.  Editing an agreeing line into another
true statement is no stronger than deleting it, which no checkpoint list can
show.  `all_signatures=True` checks every signature anyway (one Ed25519
verification per record: about 9 s of CPU at 100,000 records).

The verifier reads stored bytes only: it never re-serialises a record and
trusts the result, and it never reads the caches.  Without an outside anchor
(trusted checkpoint or witness) a consistent truncation of log and
checkpoints cannot be detected: that is the documented limit.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from . import files as F
from .checkpoint import (Checkpoint, CheckpointError, open_checkpoint, parse_history_line,
                         read_checkpoint)
from .merkle import EMPTY_ROOT, CompactRange, leaf_hash
from .note import Verifier
from .record import LineError, check_line

_CAP = 5  # problems shown per kind; the rest are counted


class Report:
    """Outcome of verify_log: ok only when there are no errors."""

    def __init__(self, origin: Optional[str] = None) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.records = 0
        self.checkpoints = 0      # stored checkpoints compared with the tree
        self.signatures = 0       # of which signature-checked
        self.origin = origin
        self.latest: Optional[Checkpoint] = None
        self._kinds: dict[str, int] = defaultdict(int)

    def __repr__(self) -> str:
        return f"Report(ok={self.ok}, records={self.records}, errors={self.errors!r}, warnings={self.warnings!r})"

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, kind: str, msg: str) -> None:
        self._kinds[kind] += 1
        if self._kinds[kind] <= _CAP:
            self.errors.append(msg)

    def finish(self) -> None:
        for kind, n in self._kinds.items():
            if n > _CAP:
                self.errors.append(f"... and {n - _CAP} more {kind} problem(s)")


class _Entry:
    """One stored checkpoint line; `signed` is None until checked."""

    __slots__ = ("line_no", "cp", "note", "signed")

    def __init__(self, line_no: int, cp: Checkpoint, note: bytes, signed: Optional[bool] = None) -> None:
        self.line_no, self.cp, self.note, self.signed = line_no, cp, note, signed


def _read_cps(items: list[tuple[int, bytes]], verifier: Verifier, verify_all: bool) -> list:
    """Parse (and with verify_all, signature-check) checkpoint lines."""
    out: list = []
    for line_no, raw in items:
        try:
            note = parse_history_line(raw)
            if verify_all:
                out.append(_Entry(line_no, open_checkpoint(note, verifier), note, True))
            else:
                out.append(_Entry(line_no, read_checkpoint(note), note))
        except CheckpointError as e:
            out.append((line_no, str(e), raw))
    return out


def _read(path: str, report: Report, label: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        report.error("file", f"{label}: cannot read: {e.strerror}")
        return None


def verify_log(folder: str, verifier: Verifier, trusted: Optional[bytes] = None,
               all_signatures: bool = False, workers: Optional[int] = None) -> Report:
    """Verify log.jsonl and checkpoints.jsonl in `folder` with `verifier`;
    `trusted` is a signed checkpoint kept elsewhere (e.g. a witness's state)."""
    rep = Report(origin=verifier.name)
    d = os.path.abspath(folder)
    cp_data = _read(os.path.join(d, F.CHECKPOINTS), rep, F.CHECKPOINTS)
    log_data = _read(os.path.join(d, F.LOG), rep, F.LOG)
    if cp_data is None or log_data is None:
        rep.finish()
        return rep

    # Checkpoint lines are parsed (and with all_signatures verified: the
    # cryptography library releases the GIL) on worker threads while this
    # thread hashes and checks the log.
    cp_lines = cp_data.split(b"\n")
    cp_torn = cp_lines.pop()
    items = list(enumerate(cp_lines, 1))
    n_workers = workers or os.cpu_count() or 2
    step = max(256, len(items) // (n_workers * 4) + 1)
    pool = ThreadPoolExecutor(max_workers=n_workers)
    futures = [pool.submit(_read_cps, items[i:i + step], verifier, all_signatures)
               for i in range(0, len(items), step)]
    try:
        roots, bad_lines, claims, n = _scan_log(log_data, verifier.name, rep)
        cps = [r for f in futures for r in f.result()]
    finally:
        pool.shutdown(wait=True)
    rep.records = n

    # Malformed log lines must each be named by a recovery record.
    for seq, (msg, raw) in sorted(bad_lines.items()):
        claim = claims["torn"].get(seq)
        if claim and claim == (len(raw), hashlib.sha256(raw).hexdigest()):
            rep.warnings.append(f"{F.LOG}:{seq + 1} (seq {seq}): torn line ({len(raw)} bytes) closed by the "
                                f"recovery record seq {claims['torn_by'][seq]}")
        else:
            rep.error("record", f"{F.LOG}:{seq + 1} (seq {seq}): {msg}")
    if log_data and not log_data.endswith(b"\n"):
        tail = log_data[log_data.rfind(b"\n") + 1:]
        rep.error("torn", f"{F.LOG}:{n + 1} (seq {n}): torn last line ({len(tail)} bytes without a newline at byte "
                          f"{len(log_data) - len(tail)}): a writer stopped mid-append or the tail was cut; run "
                          f"`hivejail audit recover --dir {d}` on the host, then verify again")

    _check_checkpoints(rep, verifier, cps, cp_torn, roots, n, claims)
    _check_latest(rep, d, verifier, roots, n)
    if trusted is not None:
        _check_trusted(rep, trusted, verifier, roots, n)
    rep.finish()
    return rep


def _scan_log(data: bytes, origin: str, rep: Report) -> tuple[list[bytes], dict, dict, int]:
    """Hash and check every complete line; returns roots[size], malformed lines,
    recovery claims and the number of complete lines."""
    lines = data.split(b"\n")
    lines.pop()  # empty after the final newline, or a torn tail reported by the caller
    cr = CompactRange()
    roots = [EMPTY_ROOT]
    bad: dict[int, tuple[str, bytes]] = {}
    claims: dict[str, dict] = {"torn": {}, "torn_by": {}, "cp_torn": {}}
    for seq, line in enumerate(lines):
        cr.append(leaf_hash(line))
        roots.append(cr.root())
        try:
            obj = check_line(line)
        except LineError as e:
            bad[seq] = (str(e), line)
            continue
        where = f"{F.LOG}:{seq + 1} (seq {seq})"
        if obj.get("seq") != seq:
            rep.error("seq", f"{where}: holds seq {obj.get('seq')!r}: records were deleted, inserted or reordered")
        if obj.get("origin") != origin:
            rep.error("origin", f"{where}: origin {obj.get('origin')!r} is not this log's {origin!r}: "
                                "a record spliced in from another log")
        if obj.get("v") != 1:
            rep.error("record", f"{where}: unknown record version {obj.get('v')!r}")
        kind = obj.get("type")
        if kind == "recovery":
            _recovery(obj, seq, lines, claims, rep)
        elif kind != "run":
            rep.error("record", f"{where}: unknown record type {kind!r}")
    return roots, bad, claims, len(lines)


def _recovery(obj: dict, seq: int, lines: list[bytes], claims: dict, rep: Report) -> None:
    """Record what a recovery record vouches for; adopted lines become warnings."""
    where = f"{F.LOG}:{seq + 1} (seq {seq})"
    after = obj.get("after_checkpoint")
    if not isinstance(after, int) or not 0 <= after <= seq:
        rep.error("record", f"{where}: recovery record with a bad after_checkpoint {after!r}")
        return
    for a in obj.get("adopted") or []:
        s = a.get("seq") if isinstance(a, dict) else None
        if not isinstance(s, int) or not after <= s < seq or hashlib.sha256(lines[s]).hexdigest() != a.get("sha256"):
            rep.error("record", f"{where}: recovery record names an adopted line {a!r} that does not match the log")
            continue
        rep.warnings.append(f"{F.LOG}:{s + 1} (seq {s}): adopted by the recovery record seq {seq}: written after "
                            f"checkpoint {after} and not signed when written (a writer crash, or planted by "
                            "someone who could write the folder)")
    torn = obj.get("torn")
    if isinstance(torn, dict) and isinstance(torn.get("seq"), int) and after <= torn["seq"] < seq:
        claims["torn"][torn["seq"]] = (torn.get("bytes"), torn.get("sha256"))
        claims["torn_by"][torn["seq"]] = seq
    elif torn is not None:
        rep.error("record", f"{where}: recovery record with a bad torn entry {torn!r}")
    cpt = obj.get("checkpoints_torn")
    if isinstance(cpt, dict) and isinstance(cpt.get("line"), int):
        claims["cp_torn"][cpt["line"]] = ((cpt.get("bytes"), cpt.get("sha256")), seq)
    elif cpt is not None:
        rep.error("record", f"{where}: recovery record with a bad checkpoints_torn entry {cpt!r}")


def _span(first: int, last: int) -> str:
    return f"record seq {first}" if first == last else f"records seq {first}..{last}"


def _check_checkpoints(rep: Report, verifier: Verifier, cps: list, cp_torn: bytes, roots: list[bytes], n: int,
                       claims: dict) -> None:
    def signed(e: _Entry) -> bool:
        """Signature-check on demand (once); a failure is reported as an error."""
        if e.signed is None:
            try:
                open_checkpoint(e.note, verifier)
                e.signed = True
            except CheckpointError as err:
                e.signed = False
                rep.error("signature", f"{F.CHECKPOINTS}:{e.line_no}: {err}")
        return e.signed

    entries: list[_Entry] = []
    for item in cps:
        if isinstance(item, _Entry):
            entries.append(item)
            continue
        line_no, msg, raw = item
        claim = claims["cp_torn"].get(line_no)
        if claim is not None and claim[0] == (len(raw), hashlib.sha256(raw).hexdigest()):
            rep.warnings.append(f"{F.CHECKPOINTS}:{line_no}: torn checkpoint line closed by the recovery record "
                                f"seq {claim[1]}")
        else:
            rep.error("signature" if "signature" in msg else "checkpoint", f"{F.CHECKPOINTS}:{line_no}: {msg}")
    if cp_torn:
        rep.error("torn", f"{F.CHECKPOINTS}:{len(cps) + 1}: torn last line ({len(cp_torn)} bytes without a newline): "
                          "a writer stopped while signing; run `hivejail audit recover` on the host")
    rep.checkpoints = len(entries)
    rep.signatures = sum(1 for e in entries if e.signed)  # all of them with all_signatures

    prev = -1
    by_size: dict[int, list[_Entry]] = defaultdict(list)
    for e in entries:
        if e.cp.size < prev:
            rep.error("order", f"{F.CHECKPOINTS}:{e.line_no}: size {e.cp.size} follows size {prev}: checkpoints "
                               "were reordered or spliced")
        prev = max(prev, e.cp.size)
        by_size[e.cp.size].append(e)

    def agrees(e: _Entry) -> bool:
        return e.cp.origin == verifier.name and e.cp.size <= n and roots[e.cp.size] == e.cp.root

    beyond: list[_Entry] = []
    bad: dict[int, _Entry] = {}
    good: set[int] = set()
    for e in entries:
        if agrees(e):
            good.add(e.cp.size)
        elif signed(e):  # a validly signed statement the log contradicts
            if e.cp.size > n:
                beyond.append(e)
            else:
                bad.setdefault(e.cp.size, e)
    for size, group in sorted(by_size.items()):
        if len({e.cp.root for e in group}) > 1:
            valid = [e for e in group if signed(e)]
            if len({e.cp.root for e in valid}) > 1:
                rep.error("fork", f"{F.CHECKPOINTS}:{valid[0].line_no} and {valid[1].line_no}: two signed "
                                  f"checkpoints of size {size} with different roots: the log forked (the key "
                                  "signed two histories)")
    if beyond:
        e = max(beyond, key=lambda x: x.cp.size)
        rep.error("truncated", f"{F.CHECKPOINTS}:{e.line_no}: signed checkpoint of size {e.cp.size} but {F.LOG} has "
                               f"only {n} complete records: {_span(n, e.cp.size - 1)} removed (tail truncated)")
        rep.latest = e.cp
    if bad:
        first = min(bad)
        below = max((s for s in good if s < first), default=0)
        span = f"{F.LOG}:{first} (seq {first - 1})" if below == first - 1 else \
            f"{F.LOG}:{below + 1}..{first} (seq {below}..{first - 1})"
        rep.error("mismatch", f"{span}: does not match the signed checkpoint of size {first} "
                              f"({F.CHECKPOINTS}:{bad[first].line_no}): a record was edited, inserted, removed or "
                              f"reordered ({len(bad)} signed checkpoint(s) disagree with the log)")

    # The newest agreeing checkpoint that is validly signed binds every line up to its size.
    covered = None
    for e in sorted((e for e in entries if agrees(e)), key=lambda x: (x.cp.size, x.line_no), reverse=True):
        if signed(e):
            covered = e.cp
            break
    if covered is None:
        rep.error("key", f"{F.CHECKPOINTS}: no checkpoint verifies with the given key and agrees with the log: "
                         "wrong key, or the log was re-signed with another key")
        return
    rep.signatures = sum(1 for e in entries if e.signed)
    if rep.latest is None:
        rep.latest = covered
    if n > covered.size:
        rep.error("unsigned", f"{F.LOG}:{covered.size + 1} (seq {covered.size}): {n - covered.size} record(s) after "
                              f"the last signed checkpoint (size {covered.size}): appended without a signature; if "
                              "a writer crashed, run `hivejail audit recover` on the host")


def _check_latest(rep: Report, d: str, verifier: Verifier, roots: list[bytes], n: int) -> None:
    path = os.path.join(d, F.LATEST)
    try:
        with open(path, "rb") as f:
            note = f.read()
    except FileNotFoundError:
        rep.warnings.append(f"{F.LATEST}: missing (only checkpoints.jsonl was checked)")
        return
    except OSError as e:
        rep.error("checkpoint", f"{F.LATEST}: cannot read: {e.strerror}")
        return
    if not note:
        rep.warnings.append(f"{F.LATEST}: empty (a crash before it was replaced; the next append rewrites it)")
        return
    try:
        cp = open_checkpoint(note, verifier)
    except CheckpointError as e:
        rep.error("checkpoint", f"{F.LATEST}: {e}")
        return
    if cp.size > n:
        rep.error("truncated", f"{F.LATEST}: signed checkpoint of size {cp.size} but {F.LOG} has only {n} records: "
                               "the tail was removed")
    elif roots[cp.size] != cp.root:
        rep.error("mismatch", f"{F.LATEST}: root of size {cp.size} does not match {F.LOG}")
    elif rep.latest is not None and cp.size < rep.latest.size:
        rep.warnings.append(f"{F.LATEST}: size {cp.size} is older than the last in {F.CHECKPOINTS} "
                            f"(size {rep.latest.size}): a writer stopped before replacing it")


def _check_trusted(rep: Report, note: bytes, verifier: Verifier, roots: list[bytes], n: int) -> None:
    try:
        cp = open_checkpoint(note, verifier)
    except CheckpointError as e:
        rep.error("trusted", f"trusted checkpoint: {e}")
        return
    if cp.size > n:
        rep.error("trusted", f"trusted checkpoint: size {cp.size} but {F.LOG} has only {n} records: the log was "
                             f"truncated or rolled back ({_span(n, cp.size - 1)} missing)")
    elif roots[cp.size] != cp.root:
        rep.error("trusted", f"trusted checkpoint: {F.LOG} does not match it at size {cp.size}: the log was "
                             "rewritten (with the signing key: it is stolen or misused)")
