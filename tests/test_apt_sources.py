"""The VM code takes its Debian mirror from the machine's apt sources, never from a host name of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from vm import apt_sources


def test_deb822_sources_skip_security(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example.org/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example.org/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert apt_sources.debian_mirror(tmp_path) == "http://mirror.example.org/debian"


def test_one_line_sources_and_disabled_stanzas(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "off.sources").write_text(
        "Enabled: no\nTypes: deb\nURIs: http://disabled.example.org/debian\nSuites: bookworm\n"
    )
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example.org/debian bookworm main\n"
        "deb-src http://src.example.org/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://proxy.local:3142/debian bookworm main\n"
    )
    assert apt_sources.debian_mirror(tmp_path) == "http://proxy.local:3142/debian"


def test_no_sources_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(apt_sources.NoMirror, match="no Debian archive"):
        apt_sources.debian_mirror(tmp_path)


def test_no_registry_host_is_written_into_the_vm_code() -> None:
    root = Path(__file__).resolve().parent.parent / "vm"
    for path in root.glob("*.py"):
        code = "\n".join(line for line in path.read_text().splitlines() if "deb.debian.org" in line)
        assert "URIs: http://deb.debian.org" not in code and "http://deb.debian.org/debian " not in code, path
