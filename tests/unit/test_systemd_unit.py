"""The systemd unit is valid and hardened (systemd-analyze's exposure score 2.0 or lower)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "store-gateway.service"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (Debian package: systemd)"
)


def test_security_exposure_is_at_most_2() -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout


def test_verify_is_clean(tmp_path: Path) -> None:
    # verify wants ExecStart's binary to exist: point it at this environment's store-gateway
    binary = Path(sys.executable).parent / "store-gateway"
    copy = tmp_path / "store-gateway.service"
    copy.write_text(UNIT.read_text().replace("/opt/store-gateway/bin/store-gateway", str(binary)))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_unit_is_type_notify_with_watchdog_and_restart() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=store-gateway",
        "TimeoutStopSec=10",
    ):
        assert line in text
