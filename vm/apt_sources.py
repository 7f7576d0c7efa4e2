"""The machine's own Debian mirror, read from its apt configuration (never a registry host written in here).

A user's machine may use a local mirror, a proxy or a snapshot; whatever apt already uses for the main Debian
archive is what the VM code uses for backports and for the trixie root.  Both deb822 ``*.sources`` files and
one-line ``sources.list`` entries are read; security archives (suites ending in ``-security``) are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

APT_DIR = Path("/etc/apt")


class NoMirror(Exception):
    """No Debian archive entry in the machine's apt sources."""


def _deb822_entries(text: str) -> list[tuple[list[str], list[str], list[str]]]:
    """(types, uris, suites) of each stanza of a deb822 sources file."""
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            if ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        entries.append(
            (fields.get("types", "").split(), fields.get("uris", "").split(), fields.get("suites", "").split())
        )
    return entries


def _one_line_entries(text: str) -> list[tuple[list[str], list[str], list[str]]]:
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^(deb|deb-src)\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if match:
            entries.append(([match[1]], [match[2]], [match[3]]))
    return entries


def debian_mirror(apt_dir: Path = APT_DIR) -> str:
    """The URI of the main Debian archive apt uses here, e.g. ``http://deb.debian.org/debian`` (no slash)."""
    entries = []
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        try:
            entries += _deb822_entries(path.read_text())
        except OSError:
            continue
    for path in [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]:
        try:
            entries += _one_line_entries(path.read_text())
        except OSError:
            continue
    for types, uris, suites in entries:
        if "deb" not in types or not uris:
            continue
        if all(s.endswith("-security") or s.endswith("/updates") for s in suites):
            continue
        for uri in uris:
            if "security" not in uri:
                return uri.rstrip("/")
    raise NoMirror(f"no Debian archive in {apt_dir}/sources.list or sources.list.d")
