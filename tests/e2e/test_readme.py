"""Every command in README.md is run or checked, so the README cannot drift from what works.

The install steps (apt-get, venv, pip) are the ones `.ci/run` executes on a fresh machine: this test
checks that they are the same. The demo command is run here, for real; the test command is what
`.ci/run` runs last.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
CI = (REPO / ".ci" / "run").read_text()


def commands() -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    return [[part.strip() for part in block.strip().split("&&")] for block in blocks]


def test_the_readme_has_the_two_commands() -> None:
    found = commands()
    assert len(found) == 2
    demo, tests = found
    assert demo[-1] == ".venv/bin/store-gateway demo"
    assert tests[-1] == ".venv/bin/pytest"


def test_install_steps_are_the_ones_ci_runs() -> None:
    for chain in commands():
        for command in chain:
            words = shlex.split(command)
            if words[0] == "apt-get" and words[1] == "install":
                packages = [w for w in words[2:] if not w.startswith("-")]
                for package in packages:
                    assert package == "python3-venv" or package in CI, f"{package} is not installed by .ci/run"
            elif words[:3] == ["python3", "-m", "venv"]:
                assert "python3 -m venv .venv" in CI
            elif words[0] == ".venv/bin/pip":
                assert words[1] == "install"
                if "-e" in words:
                    assert ".venv/bin/pip install -q -e '.[test]'" in CI
    assert re.search(r"^\.venv/bin/pytest$", CI, re.MULTILINE), "CI runs the README's test command"


def test_the_demo_command_runs(tmp_path: Path) -> None:
    demo = commands()[0][-1].replace(".venv/bin/store-gateway", f"{sys.executable} -m gateway")
    process = subprocess.Popen(
        [*shlex.split(demo), "--dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    seen = ""
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    for line in process.stdout:
        seen += line
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGINT)
    seen += process.communicate(timeout=30)[0]
    assert "is running for store DEMO1" in seen, seen
    assert process.returncode == 0, seen
    # it tells a new user what to type next
    for step in ("push-prices --store DEMO1", "watch --store DEMO1", "scan 3017620422003", "status --config"):
        assert step in seen, step
