"""The real components some tests start (Chromium, redis-server, PostgreSQL, promtool): where to
find them, and what a test does when one is missing. On a developer's machine it skips with a
message naming the package; in CI (``CI`` set, as ``.ci/run`` does after installing them) it
fails, so a real-component test never skips there."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest


def missing_component(message: str) -> NoReturn:
    """Skip (developer machine) or fail (CI) the calling test for a missing component."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def chromium() -> str:
    """Debian's headless Chromium (or another on PATH); missing: :func:`missing_component`."""
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing_component("chromium not installed: apt-get install chromium to run this test")
    return found


def headless_chromium(profile: Path, *extra: str) -> list[str]:
    """The command line of a headless Chromium run (as root, offline): no sandbox or GPU, no
    background networking (this machine's closed network refuses it), a fresh profile in
    ``profile``, console messages on stderr; ``extra`` flags and the URL follow."""
    return [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
    ]


def promtool() -> str:
    """Prometheus' ``promtool`` (Debian package ``prometheus``); missing:
    :func:`missing_component`."""
    found = shutil.which("promtool")
    if found is None:
        missing_component("promtool not installed: apt-get install prometheus to run this test")
    return found


def finish_all(procs: list[subprocess.Popen[str]], timeout: float = 300) -> None:
    """Wait for every process (``stdout`` piped as text, ``stderr`` joined to it); kill those
    still running when one fails or times out; assert they all exited 0, showing the tail of
    each one's output otherwise."""
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(log[-3000:] for log in logs)
