"""Check that the running Python environment matches a lock file exactly.

    python scripts/check_lock.py locks/main.txt [--ignore NAME ...]

Every package of the lock must be installed at exactly the locked version, and every installed
distribution must be in the lock (except those named with --ignore: our own package and sources
installed with --no-deps). Exit 0 when they match, else 1 with one line naming the differences.
Used by scripts/bootstrap.sh right after it installs a lock; tests/test_lock.py applies the same rule.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")
SHOWN = 8  # differences named in the one-line report


def normalize(name: str) -> str:
    """PEP 503 form of a distribution name (Foo_Bar.baz -> foo-bar-baz)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line; anything else but comments is an error."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: not an exact pin 'name==version': {line!r}")
        pins[normalize(match.group(1))] = match.group(2)
    return pins


def installed() -> dict[str, str]:
    """name -> version of every distribution the running interpreter sees."""
    return {normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def differences(pins: dict[str, str], have: dict[str, str], ignore: set[str]) -> list[str]:
    """Readable differences between a lock and an environment, sorted by name."""
    out = []
    for name, version in sorted(pins.items()):
        if name not in have:
            out.append(f"{name} missing (locked {version})")
        elif have[name] != version:
            out.append(f"{name} {have[name]} (locked {version})")
    out += [f"{name} {have[name]} not in the lock" for name in sorted(set(have) - set(pins) - ignore)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--ignore", nargs="*", default=[], help="installed distributions the lock leaves out")
    args = parser.parse_args(argv)
    try:
        pins = read_lock(args.lock)
    except (OSError, ValueError) as err:
        print(f"check_lock: error: {err}", file=sys.stderr)
        return 2
    diff = differences(pins, installed(), {normalize(n) for n in args.ignore})
    if diff:
        more = f", ... ({len(diff) - SHOWN} more)" if len(diff) > SHOWN else ""
        print(f"check_lock: error: {sys.prefix} differs from {args.lock}: {'; '.join(diff[:SHOWN])}{more}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
