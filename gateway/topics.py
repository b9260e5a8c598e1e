"""The MQTT topic names of contract.md §3, shared by the gateway's uplink and the `hq` tool.

A command's type is written in its topic with each `.` as `/` (`price.set` on `.../commands/price/set`):
head-office brokers other than Mosquitto use `.` as their own separator (NATS drops a client that
publishes a topic holding a `.`, RabbitMQ hands it back with `/` for `.`). The gateway also takes
the dotted form that earlier versions of the contract used.
"""

from __future__ import annotations

from dataclasses import dataclass

# Characters an id that ends up in a topic level may not hold: MQTT's level separator and wildcards,
# and the separators of the brokers that map MQTT topics onto their own subjects or routing keys.
FORBIDDEN_IN_TOPIC_ID = {".": "a dot", " ": "a space", "+": "a +", "#": "a #", "/": "a /"}


def topic_id_problem(value: str) -> str | None:
    """Why `value` cannot be one level of a topic (store id, group, device id, prefix), or None."""
    if not value:
        return "must not be empty"
    for char, name in FORBIDDEN_IN_TOPIC_ID.items():
        if char in value:
            return (
                f'"{value}" contains {name}; ids that end up in MQTT topics may not contain ".", space, "+", "#" '
                'or "/" (head-office brokers such as RabbitMQ and NATS read "." as a separator)'
            )
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return f"{value!r} contains a control character"
    return None


def command_level(name: str) -> str:
    """The topic levels that carry a command's type: `price.set` -> `price/set`."""
    return name.replace(".", "/")


def command_name(topic: str) -> str:
    """The command type a topic carries, from either form: `.../commands/price/set` or `.../commands/price.set`."""
    return topic.rsplit("/commands/", 1)[-1].replace("/", ".")


def store_command_topic(prefix: str, store: str, name: str) -> str:
    return f"{prefix}/stores/{store}/commands/{command_level(name)}"


def group_command_topic(prefix: str, group: str, name: str) -> str:
    return f"{prefix}/groups/{group}/commands/{command_level(name)}"


@dataclass(frozen=True)
class Topics:
    """The topic names of contract.md §3 for one store."""

    prefix: str
    store: str
    groups: tuple[str, ...]

    @property
    def state(self) -> str:
        return f"{self.prefix}/stores/{self.store}/gateway/state"

    def event(self, kind: str) -> str:
        return f"{self.prefix}/stores/{self.store}/events/{kind}"

    @property
    def command_filters(self) -> list[str]:
        own = f"{self.prefix}/stores/{self.store}/commands/#"
        return [own] + [f"{self.prefix}/groups/{group}/commands/#" for group in self.groups]

    @staticmethod
    def command_name(topic: str) -> str:
        return command_name(topic)
