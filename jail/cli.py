"""`hivejail`: exec, policy check/show, doctor, audit.

Exit codes of `exec` (DESIGN.md): the payload's own code; 128+N when it died
of signal N (also when the jail killed it); 125 when the jail could not be
set up or the policy is invalid (nothing ran); 126/127 not executable / not
found inside the jail.  Errors are one line on stderr, prefixed "hivejail:".
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

EXIT_SETUP = 125
EXIT_USAGE = 2


def _err(msg: str) -> None:
    print(f"hivejail: {msg}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hivejail", description="Run governance scripts in a Linux "
                                "namespace jail with a signed audit trail.")
    sub = p.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("exec", help="run a command in the jail")
    ex.add_argument("--policy", metavar="FILE", help="security_policy.yml (default: built-in)")
    ex.add_argument("--result-file", metavar="FILE", help="write the result record (JSON) here")
    ex.add_argument("--cwd", metavar="DIR", help="working directory inside the jail")
    ex.add_argument("--seccomp-learn", metavar="FILE",
                    help="run under a logging filter and write the syscalls used as a policy fragment")
    ex.add_argument("-q", "--quiet", action="store_true", help="no summary line on stderr")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS…")

    pol = sub.add_parser("policy", help="check or show a policy file")
    psub = pol.add_subparsers(dest="action", required=True)
    pc = psub.add_parser("check", help="validate; exit 0 or 2 with FILE:LINE:COL: path: message")
    pc.add_argument("file")
    ps = psub.add_parser("show", help="the effective policy with defaults, and its hash")
    ps.add_argument("file", nargs="?")

    doc = sub.add_parser("doctor", help="what this host supports, and why not")
    doc.add_argument("--json", action="store_true")

    sub.add_parser("audit", help="the signed audit log (init, verify, show, prove, …)",
                   add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["audit"]:
        from .audit.cli import main as audit_main
        return audit_main(args_in[1:])
    args = _parser().parse_args(args_in)
    if args.command == "exec":
        return _exec(args)
    if args.command == "policy":
        return _policy(args)
    if args.command == "doctor":
        from .doctor import main as doctor_main
        return doctor_main(json_output=args.json)
    return EXIT_USAGE


def _load(path: str | None):
    from .policy import default_policy, load_policy
    return load_policy(path) if path else default_policy()


def _policy(args: argparse.Namespace) -> int:
    from .policy import PolicyError, show
    try:
        policy = _load(args.file)
    except PolicyError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    if args.action == "check":
        print(f"{args.file}: ok (policy_sha256 {policy.sha256})")
    else:
        print(show(policy))
    return 0


def _exec(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        _err("exec: no command given (hivejail exec [--policy FILE] -- CMD ARGS…)")
        return EXIT_SETUP
    from .policy import PolicyError
    try:
        policy = _load(args.policy)
    except PolicyError as e:
        print(e, file=sys.stderr)
        return EXIT_SETUP
    from .run import run_audited
    options = {"seccomp_learn": args.seccomp_learn} if args.seccomp_learn else {}
    result, exit_code = run_audited(policy, argv, cwd=args.cwd, options=options)
    if args.result_file:
        try:
            _write_result(args.result_file, result.to_json())
        except OSError as e:
            _err(f"cannot write result file {args.result_file}: {e.strerror}")
            return exit_code if exit_code != 0 else EXIT_SETUP
    if result.status == "setup_error":
        _err(result.reason)
    elif not args.quiet and result.status not in ("ok", "nonzero_exit"):
        _err(f"{result.status}: {result.reason}")
    for alert in result.alerts:
        if alert.get("severity") in ("warning", "error", "critical"):
            _err(f"alert {alert.get('kind')}: {alert.get('detail', '')}")
    return exit_code


def _write_result(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
