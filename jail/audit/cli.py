"""`hivejail audit ...`: init, verify, show, prove, verify-proof, witness,
consistency, recover, status.

Exit codes: 0 ok; 1 verification failed or a witness refused; 2 usage or
operational error (one line on stderr naming the file and the fix).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence, TextIO

from . import AuditError

OK, FAILED, ERROR = 0, 1, 2


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse without sys.exit: errors and --help become exceptions main() returns from."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _Exit(ERROR)

    def exit(self, status: int = 0, message: Optional[str] = None) -> None:  # type: ignore[override]
        if message:
            print(message, file=sys.stderr, end="")
        raise _Exit(status)


class _Sub:
    """add_subparsers wrapper that skips every command but `only` (building
    all nine parsers costs milliseconds on every `prove`/`verify-proof`)."""

    def __init__(self, sub: Any, only: Optional[str]) -> None:
        self.sub, self.only = sub, only

    def add_parser(self, name: str, **kw: Any) -> Any:
        if self.only is not None and name != self.only:
            return _Ignore()
        return self.sub.add_parser(name, **kw)


class _Ignore:
    def add_argument(self, *a: Any, **kw: Any) -> None:
        pass


def _parser(only: Optional[str] = None) -> _Parser:
    p = _Parser(prog="hivejail audit", description="Tamper-evident audit log: a small transparency log.")
    sub = _Sub(p.add_subparsers(dest="cmd", metavar="COMMAND", required=True), only)

    s = sub.add_parser("init", help="create the audit folder and its key pair; prints the verifier key")
    s.add_argument("--dir", required=True, metavar="D")
    s.add_argument("--origin", help="log name (default: <host>/hivejail-audit/<random>)")

    s = sub.add_parser("verify", help="verify the whole log against a verifier key")
    s.add_argument("--dir", required=True, metavar="D")
    s.add_argument("--vkey", required=True, metavar="KEY", help="verifier key, or a file holding it (not inside D)")
    s.add_argument("--trusted-checkpoint", metavar="FILE", help="a signed checkpoint kept outside D (e.g. witness state)")
    s.add_argument("--all-signatures", action="store_true",
                   help="check the signature of every stored checkpoint, not only those that carry information")

    s = sub.add_parser("show", help="print records (does not verify)")
    s.add_argument("--dir", required=True, metavar="D")
    s.add_argument("--json", action="store_true", help="print the stored lines verbatim (JSON Lines)")
    s.add_argument("--since", type=int, default=0, metavar="SEQ", help="start at this seq")

    s = sub.add_parser("prove", help="print a C2SP tlog-proof that run SEQ is in the log")
    s.add_argument("--dir", required=True, metavar="D")
    s.add_argument("seq", type=int, metavar="SEQ")
    s.add_argument("-o", "--output", metavar="FILE")

    s = sub.add_parser("verify-proof", help="check a tlog-proof offline")
    s.add_argument("--vkey", required=True, metavar="KEY")
    s.add_argument("proof", metavar="PROOF", help="proof file, or - for stdin")
    s.add_argument("--record", metavar="FILE", help="the record line, when the proof carries none")
    s.add_argument("--json", action="store_true", help="print the proven record as JSON")

    s = sub.add_parser("witness", help="accept a checkpoint only if it extends the witnessed one")
    s.add_argument("--state", required=True, metavar="FILE", help="where the witness keeps the last checkpoint")
    s.add_argument("--vkey", required=True, metavar="KEY")
    s.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="add-checkpoint body from `hivejail audit consistency`, or a checkpoint with --dir; - for stdin")
    s.add_argument("--dir", metavar="D", help="compute the consistency proof from this log folder")

    s = sub.add_parser("consistency", help="print a witness add-checkpoint body from size OLD to the latest checkpoint")
    s.add_argument("--dir", required=True, metavar="D")
    s.add_argument("old", type=int, metavar="OLD_SIZE")
    s.add_argument("-o", "--output", metavar="FILE")

    s = sub.add_parser("recover", help="adopt what a stopped writer left, with a recovery record")
    s.add_argument("--dir", required=True, metavar="D")
    s.add_argument("--lock-timeout", type=float, default=10.0, metavar="S")

    s = sub.add_parser("status", help="append-only flags, key mode, size (no verification)")
    s.add_argument("--dir", required=True, metavar="D")
    s.add_argument("--json", action="store_true")
    return p


def main(argv: Sequence[str]) -> int:
    """Entry point for `hivejail audit ARGS`; returns the exit code."""
    argv = list(argv)
    only = argv[0] if argv and argv[0] in _COMMANDS else None
    try:
        args = _parser(only).parse_args(argv)
        return _COMMANDS[args.cmd](args)
    except _Exit as e:
        return e.status
    except AuditError as e:
        print(f"hivejail audit: {e}", file=sys.stderr)
        return ERROR
    except BrokenPipeError:
        return OK
    except KeyboardInterrupt:
        return 130


# -- helpers ------------------------------------------------------------------------------------


def _err(msg: str) -> int:
    print(f"hivejail audit: {msg}", file=sys.stderr)
    return ERROR


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise AuditError(f"cannot read {path}: {e.strerror}") from None


def _write_output(path: Optional[str], data: bytes) -> None:
    if path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise AuditError(f"cannot write {path}: {e.strerror}") from None


def load_verifier(arg: str, log_dir: Optional[str] = None) -> Any:
    """A verifier key given as text or as a file; a file inside the log folder is
    refused: whoever can write the folder could have planted it."""
    from .note import NoteError, parse_vkey

    try:
        return parse_vkey(arg.strip())
    except NoteError as first:
        if not os.path.isfile(arg):
            raise AuditError(f"--vkey: not a verifier key ({first}) and not a file") from None
    real = os.path.realpath(arg)
    if log_dir is not None:
        if _inside(real, log_dir):
            raise AuditError(f"--vkey {arg}: refusing a verifier key from inside the log folder {log_dir}: keep the "
                             "key elsewhere (anyone who can write the folder could plant one)")
    try:
        with open(real, encoding="utf-8") as f:
            return parse_vkey(f.read().strip())
    except (OSError, UnicodeDecodeError) as e:
        raise AuditError(f"--vkey {arg}: cannot read: {e}") from None
    except NoteError as e:
        raise AuditError(f"--vkey {arg}: not a verifier key: {e}") from None


def printable(s: str) -> str:
    """Text safe for a terminal: control and other unprintable characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def shell_word(raw: bytes) -> str:
    """One argv item as a shell word; bytes that are not printable UTF-8 as $'\\xNN'."""
    text = raw.decode("utf-8", "surrogateescape")
    if text and all(c.isprintable() and c not in "'\\" for c in text):
        import shlex

        return shlex.quote(text)
    out = []
    for c in text:
        if 0xDC80 <= ord(c) <= 0xDCFF:
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif c in "'\\":
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            out.extend(f"\\x{b:02x}" for b in c.encode("utf-8"))
    return "$'" + "".join(out) + "'"


# -- commands -----------------------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace) -> int:
    from .log import init_log, status

    vkey = init_log(args.dir, args.origin)
    print(vkey)
    st = status(args.dir)
    print(f"initialised {st['dir']} (origin {st['origin']}). Keep the verifier key above OUTSIDE this folder; "
          f"check the log with: hivejail audit verify --dir {st['dir']} --vkey KEY", file=sys.stderr)
    for p in st["problems"]:
        print(f"warning: {p}", file=sys.stderr)
    return OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify_log

    if not os.path.isdir(args.dir):
        return _err(f"{args.dir} is not a folder")
    verifier = load_verifier(args.vkey, args.dir)
    trusted = None
    if args.trusted_checkpoint:
        if _inside(args.trusted_checkpoint, args.dir):
            return _err(f"--trusted-checkpoint {args.trusted_checkpoint}: it must be kept outside the log folder")
        trusted = _read_input(args.trusted_checkpoint)
    rep = verify_log(args.dir, verifier, trusted, all_signatures=args.all_signatures)
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in rep.errors:
        print(f"error: {e}", file=sys.stderr)
    if not rep.ok:
        print(f"FAILED: {args.dir}: {len(rep.errors)} problem(s); the log cannot be trusted", file=sys.stderr)
        return FAILED
    latest = rep.latest
    anchor = " and the trusted checkpoint" if trusted is not None else " (no outside anchor: a cut of log and " \
                                                                       "checkpoints together would not show)"
    print(f"ok: {rep.records} records, {rep.checkpoints} checkpoints agree with the log ({rep.signatures} "
          f"signature(s) checked), origin {rep.origin}; latest size "
          f"{latest.size if latest else 0} root {latest.root_b64 if latest else '-'}; verified with "
          f"{verifier.name}+{verifier.key_id:08x}{anchor}")
    return OK


def _describe(obj: dict) -> str:
    from .record import decode_arg, us_to_rfc3339

    if obj.get("type") == "recovery":
        parts = [f"after checkpoint {obj.get('after_checkpoint')}"]
        adopted = [a.get("seq") for a in obj.get("adopted") or [] if isinstance(a, dict)]
        if adopted:
            parts.append(f"adopted seq {', '.join(map(str, adopted))}")
        if isinstance(obj.get("torn"), dict):
            parts.append(f"torn seq {obj['torn'].get('seq')} ({obj['torn'].get('bytes')} bytes)")
        if isinstance(obj.get("checkpoints_torn"), dict):
            parts.append(f"torn checkpoint line {obj['checkpoints_torn'].get('line')}")
        return f"{obj.get('seq')!s:>6}  {us_to_rfc3339(obj.get('logged_at_us'))}  RECOVERY  " + printable("; ".join(parts))
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}

    def secs(v: Any) -> str:
        return f"{v / 1e6:.3f}s" if isinstance(v, int) else "-"

    cpu_us = [usage.get("cpu_user_us"), usage.get("cpu_sys_us")]
    cpu = secs(sum(cpu_us)) if all(isinstance(v, int) for v in cpu_us) else "-"
    mem = usage.get("memory_peak_bytes")
    mem_s = f"{mem / (1 << 20):.1f}M" if isinstance(mem, int) else "-"
    code = obj.get("exit_code") if obj.get("exit_code") is not None else (
        f"sig{obj.get('signal')}" if obj.get("signal") is not None else "-")
    argv = " ".join(shell_word(decode_arg(a)) for a in obj.get("argv") or [])
    alerts = len(obj.get("alerts") or [])
    return (f"{obj.get('seq')!s:>6}  {us_to_rfc3339(obj.get('started_at_us'))}  {printable(str(obj.get('status'))):<18} "
            f"{printable(str(code)):>5}  wall {secs(usage.get('wall_us')):>9}  cpu {cpu:>9}  mem {mem_s:>8}  "
            f"alerts {alerts}  {argv}")


def _cmd_show(args: argparse.Namespace) -> int:
    from . import files as F
    from .cache import TreeCache
    from .record import LineError, check_line

    path = os.path.join(args.dir, F.LOG)
    try:
        with open(path, "rb") as f:
            start, first = 0, 0
            if args.since > 0:
                try:
                    with TreeCache(args.dir) as c:
                        off = c.end(args.since - 1)
                    f.seek(off - 1)
                    if f.read(1) == b"\n":
                        start, first = off, args.since
                except (OSError, LookupError):
                    pass
            f.seek(start)
            data = f.read()
    except OSError as e:
        return _err(f"cannot read {path}: {e.strerror}")
    lines = data.split(b"\n")
    tail = lines.pop()
    out: TextIO = sys.stdout
    for pos, line in enumerate(lines, first):
        if pos < args.since:
            continue
        if args.json:
            try:
                check_line(line)
            except LineError as e:
                print(f"warning: {F.LOG}:{pos + 1} (seq {pos}) skipped: {e}", file=sys.stderr)
                continue
            out.buffer.write(line + b"\n")
            continue
        try:
            out.write(_describe(check_line(line)) + "\n")
        except LineError as e:
            out.write(f"{pos:>6}  <unreadable line of {len(line)} bytes: {e}>\n")
    if tail:
        print(f"warning: {F.LOG}: torn last line ({len(tail)} bytes without a newline)", file=sys.stderr)
    if not args.json:
        print("(not verified: run `hivejail audit verify`)", file=sys.stderr)
    return OK


def _cmd_prove(args: argparse.Namespace) -> int:
    from .proof import make_proof

    _write_output(args.output, make_proof(args.dir, args.seq))
    return OK


def _cmd_verify_proof(args: argparse.Namespace) -> int:
    from .merkle import ProofError
    from .proof import verify_proof
    from .record import us_to_rfc3339

    verifier = load_verifier(args.vkey)
    data = _read_input(args.proof)
    record = _read_input(args.record).rstrip(b"\n") if args.record else None
    try:
        res = verify_proof(data, verifier, record)
    except ProofError as e:
        print(f"FAILED: {args.proof}: {e}", file=sys.stderr)
        return FAILED
    if args.json:
        print(json.dumps(res.record, ensure_ascii=False, sort_keys=True))
    else:
        r = res.record
        print(f"ok: seq {res.seq} (run {printable(str(r.get('id')))}, status {printable(str(r.get('status')))}, "
              f"started {us_to_rfc3339(r.get('started_at_us'))}) is in {res.checkpoint.origin} at checkpoint size "
              f"{res.checkpoint.size}")
    return OK


def _inside(path: str, folder: str) -> bool:
    folder = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), folder]) == folder


def _cmd_witness(args: argparse.Namespace) -> int:
    from .witness import witness

    if args.dir and _inside(args.state, args.dir):
        return _err(f"--state {args.state}: the witness state must be kept outside the log folder {args.dir}")
    verifier = load_verifier(args.vkey, args.dir)
    try:
        res = witness(args.state, verifier, _read_input(args.checkpoint), args.dir)
    except ValueError as e:
        return _err(f"witness: {e}")
    print(res.message, file=sys.stdout if res.accepted else sys.stderr)
    return OK if res.accepted else FAILED


def _cmd_consistency(args: argparse.Namespace) -> int:
    from .proof import consistency_body

    _write_output(args.output, consistency_body(args.dir, args.old))
    return OK


def _cmd_recover(args: argparse.Namespace) -> int:
    from .log import AuditLog

    seq = AuditLog.open(args.dir).recover(args.lock_timeout)
    print("nothing to recover" if seq is None else f"recovered: recovery record seq {seq} written and signed")
    return OK


def _cmd_status(args: argparse.Namespace) -> int:
    from .log import status

    st = status(args.dir)
    if args.json:
        print(json.dumps(st, sort_keys=True))
    else:
        flags = ", ".join(f"{k} {'append-only' if v else 'NOT append-only' if v is False else 'no inode flags'}"
                          for k, v in st["append_only"].items())
        print(f"{st['dir']}: origin {st['origin']}, size {st['size']}, key mode {st['key_mode']}; {flags}")
        for p in st["problems"]:
            print(f"warning: {p}")
    return OK if not st["problems"] else FAILED


_COMMANDS = {"init": _cmd_init, "verify": _cmd_verify, "show": _cmd_show, "prove": _cmd_prove,
             "verify-proof": _cmd_verify_proof, "witness": _cmd_witness, "consistency": _cmd_consistency,
             "recover": _cmd_recover, "status": _cmd_status}
