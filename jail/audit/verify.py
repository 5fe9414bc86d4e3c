"""Full verification of an audit folder against an operator-held verifier key.

What is checked, and why each check exists:
  * every log line is UTF-8, one JSON object, no duplicate key, byte-equal to
    its RFC 8785 form (re-encoding or key games are tamper);
  * line i has seq i and this log's origin (deletion, reordering, splicing);
  * the Merkle root of the first n lines equals the root of every stored
    checkpoint of size n, each signed by the given key (edits anywhere);
  * no stored checkpoint is larger than the log (tail truncation), none
    comes after a larger one, no two of one size differ (fork), and the last
    covers every line (records appended without a signature);
  * the optional trusted checkpoint (kept outside the folder) is matched, so
    truncating log AND checkpoints below it is caught.
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
from dataclasses import dataclass, field
from typing import Any, Optional

from . import files as F
from .checkpoint import Checkpoint, CheckpointError, open_checkpoint, parse_history_line
from .merkle import EMPTY_ROOT, CompactRange, leaf_hash
from .note import Verifier
from .record import LineError, check_line

_CAP = 5  # problems shown per kind; the rest are counted


@dataclass
class Report:
    """Outcome of verify_log: ok only when there are no errors."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    records: int = 0
    checkpoints: int = 0
    origin: Optional[str] = None
    latest: Optional[Checkpoint] = None
    _kinds: dict = field(default_factory=lambda: defaultdict(int), repr=False)

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


def _check_cps(items: list[tuple[int, bytes]], verifier: Verifier) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    for line_no, raw in items:
        try:
            out.append((line_no, open_checkpoint(parse_history_line(raw), verifier)))
        except CheckpointError as e:
            out.append((line_no, (str(e), raw)))
    return out


def _read(path: str, report: Report, label: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        report.error("file", f"{label}: cannot read: {e.strerror}")
        return None


def verify_log(folder: str, verifier: Verifier, trusted: Optional[bytes] = None,
               workers: Optional[int] = None) -> Report:
    """Verify log.jsonl and checkpoints.jsonl in `folder` with `verifier`;
    `trusted` is a signed checkpoint kept elsewhere (e.g. a witness's state)."""
    rep = Report(origin=verifier.name)
    d = os.path.abspath(folder)
    cp_data = _read(os.path.join(d, F.CHECKPOINTS), rep, F.CHECKPOINTS)
    log_data = _read(os.path.join(d, F.LOG), rep, F.LOG)
    if cp_data is None or log_data is None:
        rep.finish()
        return rep

    # Signatures are the slow part; cryptography releases the GIL, so check
    # them on worker threads while this thread hashes and parses the log.
    cp_lines = cp_data.split(b"\n")
    cp_torn = cp_lines.pop()
    items = list(enumerate(cp_lines, 1))
    n_workers = workers or os.cpu_count() or 2
    step = max(256, len(items) // (n_workers * 4) + 1)
    pool = ThreadPoolExecutor(max_workers=n_workers)
    futures = [pool.submit(_check_cps, items[i:i + step], verifier) for i in range(0, len(items), step)]

    try:
        roots, bad_lines, claims, n = _scan_log(log_data, verifier.name, rep)
        cps = [r for f in futures for r in f.result()]
    finally:
        pool.shutdown(wait=True)
    rep.records = n

    # Torn log lines must each be named by a recovery record.
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

    _check_checkpoints(rep, cps, cp_torn, roots, n, claims)
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


def _check_checkpoints(rep: Report, cps: list, cp_torn: bytes, roots: list[bytes], n: int, claims: dict) -> None:
    by_size: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    good: set[int] = set()
    bad: dict[int, int] = {}
    beyond: list[tuple[int, int]] = []
    prev = -1
    for line_no, cp in cps:
        where = f"{F.CHECKPOINTS}:{line_no}"
        if isinstance(cp, tuple):
            msg, raw = cp
            claim = claims["cp_torn"].get(line_no)
            if claim is not None and claim[0] == (len(raw), hashlib.sha256(raw).hexdigest()):
                rep.warnings.append(f"{where}: torn checkpoint line closed by the recovery record seq {claim[1]}")
            else:
                rep.error("checkpoint", f"{where}: {msg}")
            continue
        rep.checkpoints += 1
        if cp.size < prev:
            rep.error("order", f"{where}: size {cp.size} follows size {prev}: checkpoints were reordered or spliced")
        prev = max(prev, cp.size)
        by_size[cp.size].append((line_no, cp.root))
        if cp.size > n:
            beyond.append((cp.size, line_no))
        elif roots[cp.size] != cp.root:
            bad.setdefault(cp.size, line_no)
        else:
            good.add(cp.size)
        if rep.latest is None or cp.size >= rep.latest.size:
            rep.latest = cp
    if cp_torn:
        rep.error("torn", f"{F.CHECKPOINTS}:{len(cps) + 1}: torn last line ({len(cp_torn)} bytes without a newline): "
                          "a writer stopped while signing; run `hivejail audit recover` on the host")
    for size, entries in sorted(by_size.items()):
        distinct = {root for _, root in entries}
        if len(distinct) > 1:
            lines = " and ".join(str(ln) for ln, _ in entries[:2])
            rep.error("fork", f"{F.CHECKPOINTS}:{lines}: two signed checkpoints of size {size} with different roots: "
                              "the log forked (the key signed two histories)")
    if beyond:
        size, line_no = max(beyond)
        rep.error("truncated", f"{F.CHECKPOINTS}:{line_no}: signed checkpoint of size {size} but {F.LOG} has only "
                               f"{n} complete records: records seq {n}..{size - 1} were removed (tail truncated)")
    if bad:
        first = min(bad)
        below = max((s for s in good if s < first), default=0)
        span = f"{F.LOG}:{first} (seq {first - 1})" if below == first - 1 else \
            f"{F.LOG}:{below + 1}..{first} (seq {below}..{first - 1})"
        rep.error("mismatch", f"{span}: does not match the signed checkpoint of size {first} "
                              f"({F.CHECKPOINTS}:{bad[first]}): a record was edited, inserted, removed or reordered "
                              f"({len(bad)} checkpoint(s) disagree with the log)")
    if rep.checkpoints == 0:
        rep.error("checkpoint", f"{F.CHECKPOINTS}: no checkpoint verifies with the given key: wrong key, or the log "
                                "was re-signed with another key")
        return
    covered = max(by_size)
    if n > covered:
        rep.error("unsigned", f"{F.LOG}:{covered + 1} (seq {covered}): {n - covered} record(s) after the last signed "
                              f"checkpoint (size {covered}): appended without a signature; if a writer crashed, run "
                              "`hivejail audit recover` on the host")


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
                             f"truncated or rolled back (records seq {n}..{cp.size - 1} are missing)")
    elif roots[cp.size] != cp.root:
        rep.error("trusted", f"trusted checkpoint: {F.LOG} does not match it at size {cp.size}: the log was "
                             "rewritten (with the signing key: it is stolen or misused)")
