"""What the uplink tests need of a head-office broker, whichever it is (Mosquitto, RabbitMQ or NATS)."""

from __future__ import annotations

from typing import Protocol

from tests.peers.mosquitto import TlsFiles


class MqttBroker(Protocol):
    """A broker a gateway connects to over MQTT, that a test may stop, kill and start again."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def url(self) -> str: ...
    @property
    def tls(self) -> TlsFiles | None: ...
    @property
    def kind(self) -> str: ...  # mosquitto | rabbitmq | nats
    @property
    def mqtt5(self) -> bool: ...
    @property
    def log(self) -> str: ...
    def start(self) -> MqttBroker: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def restart(self) -> None: ...


# Users every session broker knows (docs/brokers.md: one user per store, head office may do anything).
STORE_PASSWORDS = {"p001": "p001-secret", "p002": "p002-secret"}
STORE_GROUPS = {"p001": ("fr",), "p002": ("rhone",)}
HQ_USER = ("hq-ops", "hq-secret")
