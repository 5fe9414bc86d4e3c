"""Profiles as data: jail/profiles/{default,strict,escape}.txt parsed and checked.

A profile is an allowlist, one ``group: syscall ...`` line at a time; an
entry may carry an argument condition, ``clone(arg0&0x7e020080==0)``.
escape.txt names the escape classes: calls no policy may allow, which a
profile may only allow under a condition.  Every name is checked against
libseccomp when the file is read, so a typo fails at load, not at run time.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Iterable

from .libseccomp import resolve_name

PROFILE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "profiles")
PROFILES = ("default", "strict")

# The payload's own steps between loading the filter and execve: always
# allowed, in every profile (and never recorded in learning mode).
BOOTSTRAP = ("execve", "brk", "mmap", "munmap", "mremap", "madvise", "close",
             "rt_sigprocmask", "rt_sigreturn", "exit", "exit_group")

_ENTRY = re.compile(r"^([a-z0-9_]+)(?:\(arg([0-5])&(0x[0-9a-f]+|[0-9]+)(==|!=)"
                    r"((?:0x[0-9a-f]+|[0-9]+)(?:\|(?:0x[0-9a-f]+|[0-9]+))*)\))?$")


class Cond(tuple):
    """(argument ``arg`` & ``mask``) == value (op "==") or is none of ``values`` (op "!=").

    A tuple (hashable, cheap to define: this module is imported on every run).
    """
    __slots__ = ()

    def __new__(cls, arg: int, mask: int, op: str, values: tuple[int, ...]) -> "Cond":
        return tuple.__new__(cls, (arg, mask, op, tuple(values)))

    arg = property(lambda self: self[0])
    mask = property(lambda self: self[1])
    op = property(lambda self: self[2])
    values = property(lambda self: self[3])

    def holds(self, args: Iterable[int]) -> bool:
        v = list(args)[self.arg] & self.mask
        return v in self.values if self.op == "==" else v not in self.values

    def masked_eq(self) -> list[tuple[int, int]]:
        """The condition as alternatives of (mask, value) for SCMP_CMP_MASKED_EQ.

        "!=" becomes the complement of the excluded values inside the mask:
        a prefix split over the mask's bits (about 32 pairs per value).
        """
        if self.op == "==":
            return [(self.mask, v) for v in self.values]
        bits = [b for b in range(63, -1, -1) if self.mask >> b & 1]
        out: list[tuple[int, int]] = []

        def split(depth: int, prefix_mask: int, prefix: int, excluded: list[int]) -> None:
            if not excluded:
                out.append((prefix_mask, prefix))
                return
            if depth == len(bits):
                return          # exactly an excluded value
            bit = 1 << bits[depth]
            for side in (0, bit):
                split(depth + 1, prefix_mask | bit, prefix | side,
                      [v for v in excluded if v & bit == side])
        split(0, 0, 0, sorted(set(self.values)))
        return out

    def __str__(self) -> str:
        vals = "|".join(hex(v) for v in self.values)
        return f"arg{self.arg}&{self.mask:#x}{self.op}{vals}"

    def __repr__(self) -> str:
        return f"Cond({self})"


class Profile:
    """One parsed profile: its groups (for reports) and its rules (for the filter)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.groups: dict[str, list[str]] = {}                 # group -> names, file order
        self.rules: dict[str, list[Cond] | None] = {}          # None: unconditional

    def group_of(self, name: str) -> str | None:
        for g, names in self.groups.items():
            if name in names:
                return g
        return None


def _parse_lines(path: str) -> Iterable[tuple[int, str, list[str]]]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        group, sep, rest = line.partition(":")
        if not sep or not re.fullmatch(r"[a-z0-9_]+", group.strip()):
            raise ValueError(f"{path}:{lineno}: expected 'group: syscall ...'")
        yield lineno, group.strip(), rest.split()


@functools.lru_cache(maxsize=None)
def escape_classes() -> dict[str, str]:
    """syscall name -> escape class, from profiles/escape.txt."""
    out: dict[str, str] = {}
    for _lineno, group, names in _parse_lines(os.path.join(PROFILE_DIR, "escape.txt")):
        for n in names:
            out[n] = group
    return out


@functools.lru_cache(maxsize=None)
def load_profile(name: str) -> Profile:
    """Parse profiles/NAME.txt; every name is checked against libseccomp."""
    if name not in PROFILES:
        raise ValueError(f"unknown seccomp profile {name!r} (known: {', '.join(PROFILES)})")
    path = os.path.join(PROFILE_DIR, f"{name}.txt")
    prof = Profile(name)
    escapes = escape_classes()
    for lineno, group, entries in _parse_lines(path):
        names = prof.groups.setdefault(group, [])
        for entry in entries:
            m = _ENTRY.match(entry)
            if not m:
                raise ValueError(f"{path}:{lineno}: cannot read entry {entry!r}")
            sc = m.group(1)
            if resolve_name(sc) < 0:
                raise ValueError(f"{path}:{lineno}: libseccomp does not know syscall {sc!r}")
            if sc not in names:
                names.append(sc)
            if m.group(2) is None:
                if sc in escapes:
                    raise ValueError(f"{path}:{lineno}: {sc} is an escape class "
                                     f"({escapes[sc]}); only a conditional entry may allow it")
                if prof.rules.get(sc, None) is not None:
                    raise ValueError(f"{path}:{lineno}: {sc} is both conditional and unconditional")
                prof.rules[sc] = None
            else:
                cond = Cond(int(m.group(2)), int(m.group(3), 0), m.group(4),
                            tuple(int(v, 0) for v in m.group(5).split("|")))
                if sc in prof.rules and prof.rules[sc] is None:
                    raise ValueError(f"{path}:{lineno}: {sc} is both conditional and unconditional")
                prof.rules.setdefault(sc, []).append(cond)      # type: ignore[union-attr]
    for sc in BOOTSTRAP:
        if prof.rules.get(sc, 0) is not None:
            raise ValueError(f"{path}: profile {name} must allow {sc} (the jail's exec path needs it)")
    return prof
