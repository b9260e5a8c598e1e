"""The commands `store-gateway demo` prints work when pasted as they are: another directory, no venv activated."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_demo import Output

VENV_BIN = Path(sys.executable).parent
SCRIPT = VENV_BIN / "store-gateway"


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed in this environment")
def test_the_printed_commands_work_as_pasted(tmp_path: Path) -> None:
    demo_dir = tmp_path / "my demo"  # a space: the printed paths must be quoted
    # as the README runs it: by the console script's path, from the checkout, venv not activated
    demo = subprocess.Popen(
        [str(SCRIPT), "demo", "--dir", str(demo_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = Output(demo)
    try:
        text = out.wait_for("Ctrl-C stops everything")
        block = text.split("In another terminal, try:", 1)[1].split("then open", 1)[0]
        commands = [line.strip() for line in block.splitlines() if line.strip()]
        assert len(commands) == 5, block
        assert all(c.startswith(str(SCRIPT)) for c in commands), commands
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"PATH": path}
        for command in commands:
            watching = " watch " in command
            done = subprocess.run(
                ["bash", "-c", f"timeout 5 {command}" if watching else command],
                cwd=elsewhere, env=env, capture_output=True, text=True, timeout=90,
            )  # fmt: skip
            if watching:
                assert done.returncode == 124 and '"watching"' in done.stderr, (command, done.stderr)
            else:
                assert done.returncode == 0, (command, done.stdout, done.stderr)
            if " scan " in command:
                assert "\t" in done.stdout and done.stdout.rstrip().endswith("€"), done.stdout  # name, tab, price
            if "status --config" in command:
                assert re.search(r"gateway +running", done.stdout), done.stdout
        second = subprocess.run(
            [str(SCRIPT), "demo", "--dir", str(demo_dir)], capture_output=True, text=True, timeout=30
        )  # one demo per folder: the second says so at once, and leaves the first alone
        assert second.returncode == 1 and "a demo is already running in" in second.stderr, second.stderr
        assert demo.poll() is None
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(30)
        out.rest()
    assert demo.returncode == 0
