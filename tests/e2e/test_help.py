"""Every subcommand's `--help` teaches: a line per argument, the defaults, examples, the doc to read."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def subparsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for action in parser._actions:  # argparse has no public way to walk its sub-commands
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[(*path, name)] = sub
                found.update(subparsers(sub, (*path, name)))
    return found


COMMANDS = subparsers(build_parser())


def test_every_command_is_covered() -> None:
    assert {"run", "check-config", "status", "demo", "hq"} <= {c[0] for c in COMMANDS}
    assert {("hq", "push-prices"), ("hq", "command"), ("hq", "watch")} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=" ".join)
def test_help_lists_every_argument_its_default_examples_and_the_doc(command: tuple[str, ...]) -> None:
    parser = COMMANDS[command]
    args = list(command)
    if command[0] == "hq" and len(command) > 1:
        args = ["hq", "--broker", "mqtt://127.0.0.1:1", *command[1:]]
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--help"], capture_output=True, text=True, timeout=30, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        name = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
        assert action.help, f"{' '.join(command)} {name}: no help text"
        line = next((x for x in text.splitlines() if x.strip().startswith(str(name))), None)
        assert line is not None and action.help.split("(")[0].strip() in text, f"{name} not explained:\n{text}"
        if action.default not in (None, False, argparse.SUPPRESS) and not action.required:
            assert "default" in action.help, f"{' '.join(command)} {name}: its default is not said"
    examples = text.split("examples:", 1)
    assert len(examples) == 2, text
    assert any(line.strip().startswith("store-gateway ") for line in examples[1].splitlines()), text
    doc = examples[1].split("read: ", 1)[1].split()[0]
    assert (REPO / doc).exists(), f"the help points at {doc}, which does not exist"
