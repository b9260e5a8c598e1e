"""What the docs tell a technician to do matches what the repository ships (read from both files)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPERATIONS = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
UNIT = (REPO / "systemd" / "store-gateway.service").read_text(encoding="utf-8")
README = (REPO / "README.md").read_text(encoding="utf-8")


def unit_value(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.splitlines() if line.startswith(f"{key}=")]


def install_steps() -> str:
    section = OPERATIONS.split("## Install on a Raspberry Pi or a Debian box", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))


def test_the_unit_runs_the_program_where_the_install_steps_put_it() -> None:
    steps = install_steps()
    venv = re.search(r"python3 -m venv (\S+)", steps)
    assert venv, steps
    program = f"{venv.group(1)}/bin/store-gateway"
    assert f"{venv.group(1)}/bin/pip install" in steps
    config = re.search(r"install -m \d+ .*config/example\.toml (\S+)", steps)
    assert config, steps
    (start,) = unit_value("ExecStart")
    (pre,) = unit_value("ExecStartPre")
    assert shlex.split(start) == [program, "run", "--config", config.group(1)]
    assert shlex.split(pre) == [program, "check-config", config.group(1)]
    assert f"{program} check-config {config.group(1)}" in OPERATIONS  # the check the docs have one run by hand


def test_the_unit_runs_as_the_user_and_groups_the_install_creates() -> None:
    useradd = re.search(r"useradd (.*)", install_steps())
    assert useradd, install_steps()
    words = shlex.split(useradd.group(1))
    assert words[-1] == unit_value("User")[0] == unit_value("Group")[0]
    groups = words[words.index("--groups") + 1].split(",")
    assert sorted(groups) == sorted(unit_value("SupplementaryGroups")[0].split())
    assert words[words.index("--home-dir") + 1] == f"/var/lib/{unit_value('StateDirectory')[0]}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (Debian package: systemd)")
def test_operations_quotes_the_exposure_score_systemd_analyze_prints() -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(REPO / "systemd" / "store-gateway.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    printed = re.search(r"Overall exposure level for store-gateway\.service: (\d+\.\d+)", done.stdout + done.stderr)
    assert printed, done.stdout + done.stderr
    quoted = re.findall(r"Overall exposure level for store-gateway\.service: (\d+\.\d+)", OPERATIONS)
    assert quoted == [printed.group(1)], f"operations.md quotes {quoted}, systemd-analyze prints {printed.group(1)}"


def test_the_readme_says_how_to_run_slow_tests_exactly_when_there_are_some() -> None:
    marked = [
        path
        for path in (REPO / "tests").rglob("*.py")
        if re.search(r"pytest\.mark\.slow\b|mark\.slow\b", path.read_text(encoding="utf-8"))
        and path.name != Path(__file__).name
    ]
    mentioned = bool(re.search(r"-m slow", README))
    assert mentioned == bool(marked), (
        f"tests marked slow: {[p.name for p in marked]}; README.md says how to run them: {mentioned}"
    )
