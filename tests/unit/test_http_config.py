"""`[http]`: a listen address other than loopback needs a token; the token never sits in the TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.http.page import pick_language

BASE = """
[store]
id = "0042"

[state]
path = "{dir}/state.db"

[uplink]
url = "mqtt://127.0.0.1:1883"

[http]
{http}
"""


def check(tmp_path: Path, http: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "gateway.toml"
    path.write_text(BASE.format(dir=tmp_path, http=http))
    code = main(["check-config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_loopback_needs_no_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = check(tmp_path, 'listen = "127.0.0.1:8080"', capsys)
    assert code == 0
    assert "http       http://127.0.0.1:8080/  (loopback, no token)" in out
    assert check(tmp_path, 'listen = "[::1]:8080"', capsys)[0] == 0
    assert check(tmp_path, 'listen = "localhost:8080"', capsys)[0] == 0


def test_other_addresses_need_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(tmp_path, 'listen = "0.0.0.0:8080"', capsys)
    assert code == 2
    assert err.startswith('http.listen: "0.0.0.0:8080" is not a loopback address, so it needs a token')
    token = tmp_path / "http-token"
    token.write_text("abc\n")
    code, out, _ = check(tmp_path, f'listen = "0.0.0.0:8080"\ntoken_file = "{token}"', capsys)
    assert code == 0 and "(bearer token required)" in out


def test_token_sources_and_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = check(tmp_path, 'listen = "0.0.0.0:8080"\ntoken = "abc"', capsys)
    assert code == 2 and "http.token: secrets may not be written in the config file; use token_file or token_env" in err
    code, _, err = check(tmp_path, 'listen = "10.0.0.5:8080"\ntoken_env = "SGW_TEST_TOKEN"', capsys)
    assert code == 2 and "http.token_env: environment variable SGW_TEST_TOKEN is not set" in err
    monkeypatch.setenv("SGW_TEST_TOKEN", "abc")
    assert check(tmp_path, 'listen = "10.0.0.5:8080"\ntoken_env = "SGW_TEST_TOKEN"', capsys)[0] == 0
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    code, _, err = check(tmp_path, f'listen = "0.0.0.0:8080"\ntoken_file = "{empty}"', capsys)
    assert code == 2 and f"http.token_file: {empty} is empty" in err
    for listen, message in (
        ("8080", 'http.listen: "8080" is not host:port'),
        ("127.0.0.1:99999", 'http.listen: port "99999" is not a number from 1 to 65535'),
        ("127.0.0.1:http", 'http.listen: port "http" is not a number'),
    ):
        code, _, err = check(tmp_path, f'listen = "{listen}"', capsys)
        assert code == 2 and err.startswith(message), err
    code, _, err = check(tmp_path, 'listen = "127.0.0.1:8080"\nport = 80', capsys)
    assert code == 2 and err.startswith("http.port: unknown key (known keys: listen, token_file, token_env)")


def test_language_from_the_request() -> None:
    assert pick_language(None, "fr-FR,fr;q=0.9,en-US;q=0.8") == "fr"
    assert pick_language(None, "en-GB,fr;q=0.5") == "en"
    assert pick_language(None, "de-DE,fr;q=0.4,en;q=0.3") == "fr"
    assert pick_language(None, "de-DE") == "en"
    assert pick_language(None, None) == "en"
    assert pick_language("fr", "en") == "fr"
    assert pick_language("xx", "fr") == "fr"
