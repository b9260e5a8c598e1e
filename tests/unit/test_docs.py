"""Docs and code cannot disagree: the examples of docs/mqtt-api.md validate against the models the
code uses, the AsyncAPI document is the one generated from them, and every command and event the
code knows is documented."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.commands import Envelope
from gateway.printing.documents import DOCUMENT_MODELS
from gateway.schema import COMMANDS, EVENTS, asyncapi, validate_event

REPO = Path(__file__).resolve().parents[2]
API = (REPO / "docs" / "mqtt-api.md").read_text()
EXAMPLES = re.findall(r"<!-- example: (command|event) (\S+) -->\s*```json\n(.*?)```", API, re.DOTALL)


def test_there_are_examples_of_every_command_and_event() -> None:
    commands = {name for kind, name, _ in EXAMPLES if kind == "command"}
    events = {name for kind, name, _ in EXAMPLES if kind == "event"}
    assert commands == set(COMMANDS)
    assert events == set(EVENTS)


@pytest.mark.parametrize(("kind", "name", "body"), EXAMPLES, ids=[f"{k} {n}" for k, n, _ in EXAMPLES])
def test_example_validates_against_the_code_models(kind: str, name: str, body: str) -> None:
    document = json.loads(body)
    if kind == "command":
        envelope = Envelope.model_validate(document)
        assert envelope.type == name
        data = COMMANDS[name].model_validate(envelope.data)
        if name == "print":
            DOCUMENT_MODELS[envelope.data["document"]].model_validate(data.model_extra)
    else:
        assert document["type"] == name
        validate_event(document)


def test_the_dispatcher_supports_exactly_the_documented_commands() -> None:
    from gateway.bus import Bus
    from gateway.commands import Dispatcher
    from gateway.config import parse_config
    from gateway.daemon import SERVICES
    from gateway.db import StateDB
    from gateway.service import Gateway
    from gateway.supervisor import Supervisor

    config = parse_config({"store": {"id": "D"}, "state": {"path": "/tmp/unused.db"}, "uplink": {"url": "mqtt://x"}})
    db = StateDB.__new__(StateDB)  # not opened: setup() only registers
    gateway = Gateway(config, db, Bus(), Dispatcher(), Supervisor(db))
    for make in SERVICES:
        make(gateway).setup()
    assert set(gateway.dispatcher.supported) == set(COMMANDS)


def test_asyncapi_document_is_generated_from_the_models() -> None:
    committed = json.loads((REPO / "docs" / "asyncapi.yaml").read_text())
    assert committed == asyncapi(), "regenerate: python -m gateway.schema > docs/asyncapi.yaml"
    assert committed["asyncapi"].startswith("3.")
    done = subprocess.run([sys.executable, "-m", "gateway.schema"], capture_output=True, text=True, cwd=REPO)
    assert json.loads(done.stdout) == committed


def test_configuration_doc_names_every_key() -> None:
    from gateway.config import Config

    text = (REPO / "docs" / "configuration.md").read_text()
    for section, field in Config.model_fields.items():
        annotation = field.annotation
        model = getattr(annotation, "__args__", (annotation,))[0]
        assert f"`[{section}]`" in text or f"`[[{section}]]`" in text, section
        for key in getattr(model, "model_fields", {}):
            assert f"`{key}`" in text, f"{section}.{key} is not documented"
