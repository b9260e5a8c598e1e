"""check-config through the real CLI: a good file passes, each bad one exits 2 naming the key."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

REPO = Path(__file__).resolve().parents[2]

GOOD = """
[store]
id = "0042"
timezone = "Europe/Paris"

[state]
path = "{tmp}/state.db"

[uplink]
url = "mqtt://127.0.0.1:1883"

[[printers]]
id = "till-1"
url = "tcp://127.0.0.1:9100"

[[scanners]]
id = "scan-1"
port = "/dev/ttyACM0"

[[scanners]]
id = "scan-2"
port = "/dev/ttyACM1"
mode = "count"

[[label_stations]]
id = "sim-1"
backend = "simulator"
directory = "{tmp}/labels"

[[sensors]]
id = "shelf-a1"
backend = "mqtt"
topic = "sensors/shelf-a1"

[[shelves]]
sensor = "shelf-a1"
sku = "A1"
unit_weight_g = 400
capacity = 12
low = 3
"""

BAD = [
    ("unknown top-level section", ("[state]", "[stat]"), "stat: unknown key"),
    ("typo in a key", ('timezone = "Europe/Paris"', 'timezome = "Europe/Paris"'), "store.timezome: unknown key"),
    ("store id with a bad character", ('id = "0042"', 'id = "00/42"'), "store.id:"),
    ("unknown time zone", ('"Europe/Paris"', '"Europe/Lyon"'), 'store.timezone: unknown time zone "Europe/Lyon"'),
    ("uplink url scheme", ('"mqtt://127.0.0.1:1883"', '"http://127.0.0.1:1883"'), "uplink.url: unknown scheme"),
    (
        "printer scheme typo",
        ('"tcp://127.0.0.1:9100"', '"tpc://127.0.0.1:9100"'),
        'printers[0].url: unknown scheme "tpc"; expected tcp, serial, usb or file',
    ),
    ("unknown scan mode", ('mode = "count"', 'mode = "counting"'), "scanners[1].mode:"),
    ("simulator without directory", ('directory = "{tmp}/labels"', ""), "label_stations[0]: simulator needs directory"),
    (
        "ble without protocol",
        ('backend = "simulator"\ndirectory = "{tmp}/labels"', 'backend = "ble"'),
        "label_stations[0]: ble needs protocol",
    ),
    (
        "ble adapter typo",
        (
            'backend = "simulator"\ndirectory = "{tmp}/labels"',
            'backend = "ble"\nprotocol = "atc_oepl"\nadapter = "bt0"',
        ),
        "label_stations[0].adapter:",
    ),
    (
        "unknown ble protocol",
        ('backend = "simulator"\ndirectory = "{tmp}/labels"', 'backend = "ble"\nprotocol = "esl"'),
        "label_stations[0].protocol:",
    ),
    (
        "protocol on a simulator",
        ('directory = "{tmp}/labels"', 'directory = "{tmp}/labels"\nprotocol = "gicisky"'),
        "label_stations[0]: protocol is for ble stations only",
    ),
    (
        "shelf on an unknown sensor",
        ('sensor = "shelf-a1"', 'sensor = "shelf-zz"'),
        'shelves[0].sensor: no sensor with id "shelf-zz"',
    ),
    (
        "duplicate device id",
        ('id = "scan-2"', 'id = "till-1"'),
        'scanners[1].id: "till-1" is already used by printers[0].id',
    ),
    (
        "password in the file",
        ('url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://127.0.0.1:1883"\npassword = "hunter2"'),
        "uplink.password: secrets may not be written in the config file",
    ),
    (
        "cert without key",
        ('url = "mqtt://127.0.0.1:1883"', 'url = "mqtts://127.0.0.1:8883"\ncert_file = "{tmp}/c.pem"'),
        "uplink:",
    ),
    ("TOML syntax error", ("[state]", "[state"), "(file): not valid TOML"),
    (
        "TOML nested deeper than its parser goes",
        ("[store]", "x = " + "[" * 5000 + "]" * 5000 + "\n[store]"),
        "(file): not valid TOML: arrays or inline tables nested too deeply",
    ),
    ("state path is a directory", ('path = "{tmp}/state.db"', 'path = "{tmp}"'), "state.path: {tmp} is a directory"),
    ("state path empty", ('path = "{tmp}/state.db"', 'path = ""'), "state.path: must not be empty"),
    (
        "state path under a file",
        ('path = "{tmp}/state.db"', 'path = "{tmp}/c.pem/db/state.db"'),
        "state.path: cannot be created: {tmp}/c.pem is a file, not a directory",
    ),
    (
        "ca_file not a certificate",
        ('url = "mqtt://127.0.0.1:1883"', 'url = "mqtts://127.0.0.1:8883"\nca_file = "{tmp}/junk.pem"'),
        "uplink.ca_file: {tmp}/junk.pem is not a PEM certificate",
    ),
    (
        "ca_file in DER",
        ('url = "mqtt://127.0.0.1:1883"', 'url = "mqtts://127.0.0.1:8883"\nca_file = "{tmp}/ca.der"'),
        "uplink.ca_file: {tmp}/ca.der is not a PEM certificate (-----BEGIN CERTIFICATE-----) of the broker's CA (binary",
    ),
    (
        "key_file that is a certificate",
        (
            'url = "mqtt://127.0.0.1:1883"',
            'url = "mqtts://127.0.0.1:8883"\ncert_file = "{tmp}/c.pem"\nkey_file = "{tmp}/c.pem"',
        ),
        "uplink.key_file: {tmp}/c.pem is not a PEM private key",
    ),
    (
        "cert_file that is a key",
        (
            'url = "mqtt://127.0.0.1:1883"',
            'url = "mqtts://127.0.0.1:8883"\ncert_file = "{tmp}/k.pem"\nkey_file = "{tmp}/k.pem"',
        ),
        "uplink.cert_file: {tmp}/k.pem is not a PEM certificate",
    ),
    (
        "key of another certificate",
        (
            'url = "mqtt://127.0.0.1:1883"',
            'url = "mqtts://127.0.0.1:8883"\ncert_file = "{tmp}/c.pem"\nkey_file = "{tmp}/other-k.pem"',
        ),
        "uplink.key_file: {tmp}/other-k.pem is not the key of {tmp}/c.pem",
    ),
    ("missing store id", ('id = "0042"', ""), "store.id: required key is missing"),
    ("capacity not a number", ("capacity = 12", 'capacity = "twelve"'), "shelves[0].capacity:"),
    # ids that end up in MQTT topics (contract §3): no ".", space, "+", "#" or "/"
    ("store id with a dot", ('id = "0042"', 'id = "00.42"'), 'store.id: "00.42" contains a dot'),
    (
        "group with a dot",
        ('timezone = "Europe/Paris"', 'timezone = "Europe/Paris"\ngroups = ["fr", "fr.sud"]'),
        'store.groups[1]: "fr.sud" contains a dot; ids that end up in MQTT topics may not contain',
    ),
    (
        "group with a space",
        ('timezone = "Europe/Paris"', 'timezone = "Europe/Paris"\ngroups = ["rhone alpes"]'),
        'store.groups[0]: "rhone alpes" contains a space',
    ),
    (
        "group with a wildcard",
        ('timezone = "Europe/Paris"', 'timezone = "Europe/Paris"\ngroups = ["fr/#"]'),
        'store.groups[0]: "fr/#" contains a #',
    ),
    (
        "group with a plus",
        ('timezone = "Europe/Paris"', 'timezone = "Europe/Paris"\ngroups = ["a+b"]'),
        'store.groups[0]: "a+b" contains a +',
    ),
    (
        "prefix with a slash",
        ('url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://127.0.0.1:1883"\ntopic_prefix = "acme/retail"'),
        'uplink.topic_prefix: "acme/retail" contains a /',
    ),
    (
        "prefix with a dot",
        ('url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://127.0.0.1:1883"\ntopic_prefix = "acme.retail"'),
        'uplink.topic_prefix: "acme.retail" contains a dot',
    ),
    ("device id with a dot", ('id = "till-1"', 'id = "till.1"'), 'printers[0].id: "till.1" contains a dot'),
    ("sensor id with a space", ('id = "shelf-a1"', 'id = "shelf a1"'), 'sensors[0].id: "shelf a1" contains a space'),
    (
        "device id with another character",
        ('id = "scan-1"', 'id = "scan:1"'),
        'scanners[0].id: "scan:1" may hold only letters, digits, "_" and "-"',
    ),
]


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_good_file_passes_with_a_summary(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD.replace("{tmp}", str(tmp_path)))
    done = check_config(path)
    assert done.returncode == 0, done.stderr
    assert "0042" in done.stdout and "till-1" in done.stdout and "configuration OK" in done.stdout


def test_a_ble_station_passes_with_its_adapter_and_protocol(tmp_path: Path) -> None:
    path = tmp_path / "ble.toml"
    text = GOOD.replace('backend = "simulator"\ndirectory = "{tmp}/labels"', 'backend = "ble"\nprotocol = "gicisky"')
    path.write_text(text.replace("{tmp}", str(tmp_path)))
    done = check_config(path)
    assert done.returncode == 0, done.stderr
    assert "sim-1            ble  hci0  gicisky tags" in done.stdout


def test_the_example_config_passes() -> None:
    done = check_config(REPO / "config" / "example.toml")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("case", "change", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_file_exits_2_naming_the_key(tmp_path: Path, case: str, change: tuple[str, str], expected: str) -> None:
    ca = trustme.CA()
    mine, other = ca.issue_cert("store-0042"), ca.issue_cert("store-0043")
    mine.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    mine.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other-k.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    (tmp_path / "ca.der").write_bytes(ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode()))
    old, new = change
    text = GOOD.replace(old.replace("{tmp}", "{tmp}"), new, 1) if old in GOOD else GOOD
    assert text != GOOD, f"the case {case!r} did not change the file"
    path = tmp_path / "bad.toml"
    path.write_text(text.replace("{tmp}", str(tmp_path)))
    done = check_config(path)
    assert done.returncode == 2, done.stdout
    assert expected.replace("{tmp}", str(tmp_path)) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_run_refuses_a_bad_file_before_touching_anything(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace("{tmp}", str(tmp_path)).replace('"tcp://', '"tpc://'))
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(path)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 2
    assert "printers[0].url" in done.stderr
    assert not (tmp_path / "state.db").exists()
