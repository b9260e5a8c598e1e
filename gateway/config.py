"""The gateway's one configuration file: TOML, validated with pydantic, unknown keys refused.

Every problem is reported as `dotted.key: message` so a technician can find the line to fix.
The keys are those of contract.md §2; docs/configuration.md describes each one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.topics import topic_id_problem


def _topic_id(value: str) -> str:
    problem = topic_id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    if len(value) > 64:
        raise ValueError("at most 64 characters")
    return value


def _device_id(value: str) -> str:
    _topic_id(value)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ValueError(f'"{value}" may hold only letters, digits, "_" and "-"')
    return value


def _store_id(value: str) -> str:
    _device_id(value)
    if len(value) > 32:
        raise ValueError("at most 32 characters")
    return value


# Ids that end up in MQTT topics (contract.md §3): no ".", space, "+", "#" or "/".
TopicSegment = Annotated[str, AfterValidator(_topic_id)]
DeviceId = Annotated[str, AfterValidator(_device_id)]
StoreId = Annotated[str, AfterValidator(_store_id)]

PRINTER_SCHEMES = ("tcp", "serial", "usb", "file")
# A secret written in the TOML, and the keys that take it instead.
SECRET_KEYS = {
    "password": "password_file or password_env",
    "bind_key": "bind_key_file or bind_key_env",
    "bindkey": "bind_key_file or bind_key_env",
    "key_password": "a key_file without a passphrase, readable only by the gateway (mode 0640)",
    "token": "token_file or token_env",
}


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` are `dotted.key: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(_Section):
    """[store]: who this gateway is."""

    id: StoreId
    timezone: str = "UTC"
    groups: list[TopicSegment] = []
    name: str = ""
    address: list[str] = []
    footer: str = ""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f'unknown time zone "{value}"; expected an IANA name such as "Europe/Paris"') from None
        return value


class StateConfig(_Section):
    """[state]: where the SQLite state database lives."""

    path: Path = Path("/var/lib/store-gateway/state.db")

    @field_validator("path", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError('must not be empty; the database file, such as "/var/lib/store-gateway/state.db"')
        return value

    @field_validator("path")
    @classmethod
    def _usable(cls, value: Path) -> Path:
        problem = state_path_problem(value)
        if problem:
            raise ValueError(problem)
        return value


def state_path_problem(path: Path) -> str | None:
    """Why the gateway could not open or create its database at `path` (None: it can)."""
    if path.is_dir():
        return f'{path} is a directory; give the database file in it, such as "{path / "state.db"}"'
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is not readable and writable by this user"
        return None
    parent = path.parent
    while not parent.exists():  # the directories are created: the first existing one must allow it
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable by this user"
    return None


# What each TLS file must hold, as PEM (what `run` loads; anything else fails there on every connect).
_PEM_EXPECTED = {
    "ca_file": ("CERTIFICATE", "a PEM certificate (-----BEGIN CERTIFICATE-----) of the broker's CA"),
    "cert_file": ("CERTIFICATE", "a PEM certificate (-----BEGIN CERTIFICATE-----), the store's client certificate"),
    "key_file": ("PRIVATE KEY", "a PEM private key (-----BEGIN PRIVATE KEY-----), the client certificate's key"),
}


def pem_problem(path: Path, field: str) -> str | None:
    """Why `path` is not the PEM file `field` needs (None: it is, as far as its own content goes)."""
    label, wanted = _PEM_EXPECTED[field]
    try:
        text = path.read_bytes()[: 1024 * 1024].decode("ascii")
    except (OSError, UnicodeDecodeError):
        return f"{path} is not {wanted} (binary content: a DER file? convert it with openssl to PEM)"
    if not re.search(rf"-----BEGIN [A-Z ]*{label}-----", text):
        return f"{path} is not {wanted}"
    if field == "ca_file":
        try:
            ssl.create_default_context(cafile=str(path))
        except ssl.SSLError as exc:
            return f"{path} is not {wanted}: {exc.reason or exc}"
    if field == "key_file" and "ENCRYPTED" in text:
        return f"{path} is an encrypted key; the gateway starts unattended, so give it the key without a passphrase"
    return None


def check_broker_url(value: str, schemes: tuple[str, ...] = ("mqtt", "mqtts")) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f'unknown scheme "{parts.scheme}"; expected {" or ".join(s + "://" for s in schemes)}')
    if not parts.hostname:
        raise ValueError("no host name in the URL")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    return value


class BrokerAddress(_Section):
    """Host, port and TLS flag parsed from an mqtt:// or mqtts:// URL."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(host=parts.hostname or "", port=parts.port or (8883 if tls else 1883), tls=tls)


def _checks_secrets(info: ValidationInfo) -> bool:
    """False when the caller only reads the config (`status`): it needs no password or key file."""
    return not isinstance(info.context, dict) or bool(info.context.get("secrets", True))


class _MqttLogin(_Section):
    """A user name and the password for an MQTT broker: from a file or an environment variable, never the TOML."""

    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None

    @field_validator("password_file")
    @classmethod
    def _password_readable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and _checks_secrets(info) and not os.access(value, os.R_OK):
            raise ValueError(f"cannot read {value}")
        return value

    @field_validator("password_env")
    @classmethod
    def _env_set(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and _checks_secrets(info) and value not in os.environ:
            raise ValueError(f"environment variable {value} is not set")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> _MqttLogin:
        if self.password_file and self.password_env:
            raise ValueError("give password_file or password_env, not both")
        return self

    def password(self) -> str | None:
        """The MQTT password from its file or environment variable, never from the TOML."""
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        if self.password_env is not None:
            return os.environ[self.password_env]
        return None


class UplinkConfig(_MqttLogin):
    """[uplink]: the MQTT link to head office."""

    url: str
    topic_prefix: TopicSegment = "retail"
    client_id: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    inflight: Annotated[int, Field(ge=1, le=1000)] = 100
    max_command_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 1024 * 1024

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_broker_url(value)

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None or not _checks_secrets(info):
            return value
        if not os.access(value, os.R_OK) or value.is_dir():
            raise ValueError(f"cannot read {value}")
        if info.field_name in _PEM_EXPECTED:
            problem = pem_problem(value, info.field_name)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> UplinkConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate and its key)")
        if not self.url.startswith("mqtts") and (self.ca_file or self.cert_file):
            raise ValueError("ca_file/cert_file need an mqtts:// url")
        return self

    @property
    def broker(self) -> BrokerAddress:
        return BrokerAddress.parse(self.url)


class PrinterConfig(_Section):
    """[[printers]]: an ESC/POS receipt or ticket printer."""

    id: DeviceId
    url: str
    profile: str | None = None
    width_chars: Annotated[int, Field(ge=24, le=80)] = 48
    job_ttl_s: Annotated[int, Field(ge=10)] = 3600
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in PRINTER_SCHEMES:
            raise ValueError(f'unknown scheme "{scheme}"; expected tcp, serial, usb or file')
        return value


ScanMode = Literal["price_check", "count", "receive", "return", "pickup"]


class ScannerConfig(_Section):
    """[[scanners]]: a serial barcode scanner and what its scans mean."""

    id: DeviceId
    port: str
    baudrate: Annotated[int, Field(gt=0)] = 9600
    mode: ScanMode = "price_check"
    suffix: Literal["CR", "LF", "CRLF", "gap"] = "CR"
    gap_ms: Annotated[int, Field(ge=5, le=2000)] = 50
    aim_prefix: bool = False
    reply: bool = True
    reply_format: str = "{name}\t{price}"
    reply_unknown: str = "unknown article"
    printer: DeviceId | None = None


class InStoreCodeRule(_Section):
    """One restricted-circulation EAN-13 layout: prefix, item digits, value digits, check digit."""

    prefix: Annotated[str, Field(pattern=r"^(0[2-9]|2[0-9])$")]
    kind: Literal["price", "weight"]
    item_digits: Annotated[int, Field(ge=1, le=9)] = 5
    value_digits: Annotated[int, Field(ge=1, le=9)] = 5
    decimals: Annotated[int, Field(ge=0, le=3)] = 2

    @model_validator(mode="after")
    def _fits(self) -> InStoreCodeRule:
        if self.item_digits + self.value_digits != 10:
            raise ValueError("item_digits + value_digits must be 10 (2 prefix digits + 10 + 1 check digit = 13)")
        return self


class CodesConfig(_Section):
    """[codes]: what the store's own (in-store) EAN-13 codes mean; the default is a common French layout."""

    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "EUR"
    in_store: list[InStoreCodeRule] | None = None


class LabelStationConfig(_Section):
    """[[label_stations]]: an OpenEPaperLink access point, the PNG simulator, or Bluetooth tags (ble)."""

    id: DeviceId
    backend: Literal["openepaperlink", "simulator", "ble"]
    url: str | None = None
    directory: Path | None = None
    adapter: Annotated[str, Field(pattern=r"^hci[0-9]{1,2}$")] = "hci0"
    protocol: Literal["atc_oepl", "gicisky"] | None = None
    max_in_flight: Annotated[int, Field(ge=1, le=256)] = 8
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    confirm_timeout_s: Annotated[float, Field(gt=0)] = 900.0
    confirm_delay_s: Annotated[float, Field(ge=0)] = 0.2
    failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.0

    @model_validator(mode="after")
    def _backend_needs(self) -> LabelStationConfig:
        if self.backend == "openepaperlink" and (not self.url or urlsplit(self.url).scheme not in ("http", "https")):
            raise ValueError('openepaperlink needs url = "http://<access point>"')
        if self.backend == "simulator" and self.directory is None:
            raise ValueError('simulator needs directory = "/path/for/pngs"')
        if self.backend == "ble" and self.protocol is None:
            raise ValueError('ble needs protocol = "atc_oepl" or "gicisky" (the tags\' firmware)')
        if self.backend != "ble" and self.protocol is not None:
            raise ValueError(f'protocol is for ble stations only, not "{self.backend}"')
        return self

    @model_validator(mode="before")
    @classmethod
    def _ble_one_at_a_time(cls, data: Any) -> Any:
        # one connection at a time: a BLE label is `sent` when its upload starts, not while it waits
        if isinstance(data, dict) and data.get("backend") == "ble" and "max_in_flight" not in data:
            return {**data, "max_in_flight": 1}
        return data


class SensorConfig(_Section):
    """[[sensors]]: a shelf sensor on the local MQTT broker or over BTHome BLE."""

    id: DeviceId
    backend: Literal["mqtt", "bthome"]
    topic: str | None = None
    address: Annotated[str, Field(pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")] | None = None
    bind_key_file: Path | None = None
    bind_key_env: str | None = None
    expected_interval_s: Annotated[float, Field(gt=0)] = 300.0

    @model_validator(mode="after")
    def _backend_needs(self) -> SensorConfig:
        if self.backend == "mqtt" and not self.topic:
            raise ValueError('mqtt sensors need topic = "sensors/<id>"')
        if self.backend == "bthome" and not self.address:
            raise ValueError('bthome sensors need address = "AA:BB:CC:DD:EE:FF"')
        return self


class LocalMqttConfig(_MqttLogin):
    """[local_mqtt]: the in-store broker that local sensors publish to (login as for the uplink)."""

    url: str = "mqtt://127.0.0.1:1883"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_broker_url(value)


class ShelfConfig(_Section):
    """[[shelves]]: a shelf slot watched by a weight sensor."""

    sensor: DeviceId
    sku: Annotated[str, Field(min_length=1, max_length=64)]
    unit_weight_g: Annotated[float, Field(gt=0)]
    tare_g: Annotated[float, Field(ge=0)] = 0
    capacity: Annotated[int, Field(gt=0)]
    low: Annotated[int, Field(ge=0)] = 0


class OrdersConfig(_Section):
    """[orders]: click & collect, e-reservation and ship-from-store."""

    printer: DeviceId | None = None
    pick_to_light: bool = True
    flash_color: Literal["red", "green", "blue", "yellow", "white", "cyan", "magenta"] = "green"
    flash_seconds: Annotated[float, Field(gt=0, le=600)] = 60.0


def split_listen(value: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:8080`) into its host and port; ValueError with the fix otherwise."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f'"{value}" is not host:port; expected e.g. "127.0.0.1:8080"')
    host = host.removeprefix("[").removesuffix("]")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f'port "{port_text}" is not a number from 1 to 65535')
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpConfig(_Section):
    """[http]: the read-only status page, JSON API and metrics. Absent: no HTTP server at all."""

    listen: str = "127.0.0.1:8080"
    token_file: Path | None = None
    token_env: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("token_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not os.access(value, os.R_OK):
            raise ValueError(f"cannot read {value}")
        if value is not None and not value.read_text(encoding="utf-8").strip():
            raise ValueError(f"{value} is empty; put the token in it")
        return value

    @field_validator("token_env")
    @classmethod
    def _env_set(cls, value: str | None) -> str | None:
        if value is not None and not os.environ.get(value, "").strip():
            raise ValueError(f"environment variable {value} is not set (or empty)")
        return value

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def token(self) -> str | None:
        """The bearer token from its file or environment variable, never from the TOML."""
        if self.token_file is not None:
            return self.token_file.read_text(encoding="utf-8").strip()
        if self.token_env is not None:
            return os.environ[self.token_env].strip()
        return None


class LoggingConfig(_Section):
    """[logging]: how much the daemon says."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Section):
    """The whole file."""

    store: StoreConfig
    state: StateConfig = StateConfig()
    uplink: UplinkConfig
    printers: list[PrinterConfig] = []
    scanners: list[ScannerConfig] = []
    label_stations: list[LabelStationConfig] = []
    sensors: list[SensorConfig] = []
    local_mqtt: LocalMqttConfig = LocalMqttConfig()
    shelves: list[ShelfConfig] = []
    orders: OrdersConfig = OrdersConfig()
    codes: CodesConfig = CodesConfig()
    logging: LoggingConfig = LoggingConfig()
    http: HttpConfig | None = None

    @property
    def client_id(self) -> str:
        return self.uplink.client_id or f"store-gateway-{self.store.id}"

    def device_ids(self) -> Iterable[tuple[str, str]]:
        """(kind, id) of every configured device."""
        for kind, items in (
            ("printer", self.printers),
            ("scanner", self.scanners),
            ("label_station", self.label_stations),
            ("sensor", self.sensors),
        ):
            for item in items:
                yield kind, item.id


def _cross_checks(config: Config) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    ids = (
        [("printers", i, p.id) for i, p in enumerate(config.printers)]
        + [("scanners", i, s.id) for i, s in enumerate(config.scanners)]
        + [("label_stations", i, s.id) for i, s in enumerate(config.label_stations)]
        + [("sensors", i, s.id) for i, s in enumerate(config.sensors)]
    )
    for section, index, device_id in ids:
        where = f"{section}[{index}].id"
        if device_id in seen:
            problems.append(f'{where}: "{device_id}" is already used by {seen[device_id]}')
        seen[device_id] = where
    printer_ids = {p.id for p in config.printers}
    for index, scanner in enumerate(config.scanners):
        if scanner.printer is not None and scanner.printer not in printer_ids:
            problems.append(f'scanners[{index}].printer: no printer with id "{scanner.printer}"')
    if config.orders.printer is not None and config.orders.printer not in printer_ids:
        problems.append(f'orders.printer: no printer with id "{config.orders.printer}"')
    sensor_ids = {s.id for s in config.sensors}
    for index, shelf in enumerate(config.shelves):
        if shelf.sensor not in sensor_ids:
            problems.append(f'shelves[{index}].sensor: no sensor with id "{shelf.sensor}"')
        if shelf.low >= shelf.capacity:
            problems.append(f"shelves[{index}].low: must be below capacity ({shelf.capacity})")
    if config.http is not None:
        http = config.http
        if http.token_file is not None and http.token_env is not None:
            problems.append("http.token_file: give token_file or token_env, not both")
        if not http.loopback and http.token_file is None and http.token_env is None:
            problems.append(
                f'http.listen: "{http.listen}" is not a loopback address, so it needs a token: '
                'add token_file = "/etc/store-gateway/http-token" (or token_env), or listen on 127.0.0.1'
            )
    return problems


def _tls_pair_problems(config: Config) -> list[str]:
    """The client certificate and key load together (what the TLS handshake of `run` does first)."""
    uplink = config.uplink
    if uplink.cert_file is None or uplink.key_file is None:
        return []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(uplink.cert_file), str(uplink.key_file), password=lambda: b"")
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            return [f"uplink.key_file: {uplink.key_file} is not the key of {uplink.cert_file}"]
        return [f"uplink.cert_file: {uplink.cert_file} and {uplink.key_file} do not load together: {reason}"]
    return []


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(file)"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the key at `loc`, to list its known keys."""
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        field = fields.get(part) if isinstance(fields, dict) else None
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        model = args[0] if args and isinstance(args[0], type) else annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _message(error: Any) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        if key in SECRET_KEYS:
            return f"secrets may not be written in the config file; use {SECRET_KEYS[key]}"
        model = _model_at(loc)
        known = ", ".join(model.model_fields) if model is not None else ""
        return f"unknown key{f' (known keys: {known})' if known else ''}"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def problems_of(error: ValidationError) -> list[str]:
    """`dotted.key: message` lines for a pydantic ValidationError."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        lines.append(f"{_dotted(loc)}: {_message(item)}")
    return lines


def parse_config(data: dict[str, Any], *, secrets: bool = True) -> Config:
    """Validate an already-parsed TOML document; raise ConfigError listing every problem.

    `secrets=False` skips the checks that the key, certificate and password files are readable and
    the password variables set: `status` reads the config as a technician, without the daemon's secrets.
    """
    try:
        config = Config.model_validate(data, context={"secrets": secrets})
    except ValidationError as exc:
        raise ConfigError(problems_of(exc)) from None
    problems = _cross_checks(config) + (_tls_pair_problems(config) if secrets else [])
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: Path, *, secrets: bool = True) -> Config:
    """Read and validate a config file; raise ConfigError with `dotted.key: message` lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"(file): cannot read {path}: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"(file): {path} is not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"(file): not valid TOML: {exc}"]) from None
    except RecursionError:  # the parser recurses for each level of nested arrays and inline tables
        raise ConfigError(["(file): not valid TOML: arrays or inline tables nested too deeply"]) from None
    return parse_config(data, secrets=secrets)


def summary(config: Config) -> str:
    """The one-screen summary `check-config` prints for a valid file."""
    broker = config.uplink.broker
    auth = []
    if config.uplink.cert_file:
        auth.append("client certificate")
    if config.uplink.username:
        auth.append(f"user {config.uplink.username}")
    lines = [
        f"store      {config.store.id}  ({config.store.timezone})"
        + (f"  groups: {', '.join(config.store.groups)}" if config.store.groups else ""),
        f"state      {config.state.path}",
        f"uplink     {'mqtts' if broker.tls else 'mqtt'}://{broker.host}:{broker.port}"
        f"  client id {config.client_id}  prefix {config.uplink.topic_prefix}  MQTT {config.uplink.protocol}"
        + (f"  ({', '.join(auth)})" if auth else ""),
    ]
    for printer in config.printers:
        lines.append(f"printer    {printer.id:<16} {printer.url}")
    for scanner in config.scanners:
        lines.append(f"scanner    {scanner.id:<16} {scanner.port} @{scanner.baudrate}  mode {scanner.mode}")
    for station in config.label_stations:
        where = station.url or str(station.directory)
        if station.backend == "ble":
            where = f"{station.adapter}  {station.protocol} tags"
        lines.append(f"labels     {station.id:<16} {station.backend}  {where}")
    for sensor in config.sensors:
        where = sensor.topic or sensor.address or ""
        lines.append(f"sensor     {sensor.id:<16} {sensor.backend}  {where}")
    for shelf in config.shelves:
        lines.append(
            f"shelf      {shelf.sensor:<16} sku {shelf.sku}  {shelf.unit_weight_g:g} g/unit"
            f"  capacity {shelf.capacity}  low {shelf.low}"
        )
    if config.sensors:
        lines.append(f"local mqtt {config.local_mqtt.url}")
    if config.http is not None:
        http = config.http
        guard = "loopback, no token" if http.loopback and http.token() is None else "bearer token required"
        lines.append(f"http       http://{http.listen}/  ({guard})")
    return "\n".join(lines)
