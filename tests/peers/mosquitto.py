"""A real mosquitto broker for tests: started on a free 127.0.0.1 port from a generated config.

It can be stopped, killed and restarted on the same port (outage tests), and comes in three
flavours: plain, TLS with client certificates (mTLS, certificates made with trustme), and with a
password file and an ACL.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from tests.peers.process import ChildServer


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout}s")


@dataclass
class TlsFiles:
    """Paths of the PEM files a TLS broker and its clients use."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass
class MosquittoBroker(ChildServer):
    """One mosquitto process with its own config, data directory and log."""

    workdir: Path
    port: int = field(default_factory=free_port)
    tls: TlsFiles | None = None
    users: dict[str, str] | None = None
    acl: str | None = None
    config_text: str | None = None  # a whole config of one's own (listeners, TLS, ACL) instead of the generated one
    process: subprocess.Popen[bytes] | None = None

    host = "127.0.0.1"
    kind = "mosquitto"
    mqtt5 = True

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        if self.config_text is not None:
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(self.config_text)
            return conf
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 1",
            "set_tcp_nodelay true",
            "max_queued_messages 300000",
            "max_inflight_messages 100",
            f"log_dest file {self.workdir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        if self.tls:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                "require_certificate true",
                "use_identity_as_username false",
            ]
        if self.users is not None:
            pwfile = self.workdir / "passwd"
            pwfile.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pwfile), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            aclfile = self.workdir / "acl"
            aclfile.write_text(self.acl)
            lines.append(f"acl_file {aclfile}")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        for path in self.workdir.iterdir():
            path.chmod(0o700 if path.is_dir() else 0o600)
        return conf

    def start(self) -> MosquittoBroker:
        """Start (or start again) on the same port and wait until it listens."""
        if self.process and self.process.poll() is None:
            return self
        conf = self._write_config()
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_for_port(self.port)
        except RuntimeError:
            self.process.kill()
            _, err = self.process.communicate()
            raise RuntimeError(f"mosquitto failed: {err.decode(errors='replace')}\n{self.log}") from None
        return self

    def freeze(self) -> None:
        """SIGSTOP: a hung broker (or a dead link): connections stay open and nothing is answered."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("store-gateway-test-client")
    files = TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    return files


def require_mosquitto() -> None:
    if shutil.which("mosquitto") is None:
        raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto (see .ci/run)")


REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONF_DIR = "/etc/mosquitto/store-gateway/"


@dataclass
class SecureBroker:
    """mosquitto running the shipped head-office setup (config/mosquitto/) unchanged but for ports and paths.

    The drop-in `store-gateway.conf` is used as Debian's mosquitto.conf includes it (after that file's
    persistence and log lines); its two listeners move to free ports on 127.0.0.1 and its files to
    the test's directory. Certificates come from three trustme CAs: one for the broker, one for
    stores, one for head office. `as_store()` / `as_head_office()` give the MosquittoBroker view a
    client of that identity uses (`write_config`, `head_office`).
    """

    workdir: Path
    broker: MosquittoBroker
    hq_port: int
    server_ca: Path
    _stores_ca: trustme.CA
    _hq_ca: trustme.CA

    @classmethod
    def start(cls, workdir: Path) -> SecureBroker:
        files = workdir / "etc"
        files.mkdir(parents=True, exist_ok=True)
        server_ca, stores_ca, hq_ca = trustme.CA(), trustme.CA(), trustme.CA()
        server = server_ca.issue_cert("127.0.0.1", "localhost")
        server_ca.cert_pem.write_to_path(str(files / "server-ca.pem"))
        server.cert_chain_pems[0].write_to_path(str(files / "broker.pem"))
        server.private_key_pem.write_to_path(str(files / "broker.key"))
        stores_ca.cert_pem.write_to_path(str(files / "stores-ca.pem"))
        hq_ca.cert_pem.write_to_path(str(files / "head-office-ca.pem"))
        shipped = REPO / "config" / "mosquitto"
        for acl in ("stores.acl", "head-office.acl"):
            (files / acl).write_text((shipped / acl).read_text())
        store_port, hq_port = free_port(), free_port()
        text = (shipped / "store-gateway.conf").read_text().replace(SHIPPED_CONF_DIR, f"{files}/")
        text = re.sub(r"(?m)^listener 8883$", f"listener {store_port} 127.0.0.1", text)
        text = re.sub(r"(?m)^listener 8884$", f"listener {hq_port} 127.0.0.1", text)
        if f"listener {store_port} " not in text or f"listener {hq_port} " not in text:
            raise RuntimeError("config/mosquitto/store-gateway.conf no longer has listeners 8883 and 8884")
        data = workdir / "data"
        data.mkdir(exist_ok=True)
        main = [  # what Debian's /etc/mosquitto/mosquitto.conf says before its include_dir
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 1",
            f"log_dest file {workdir / 'mosquitto.log'}",
            "log_type all",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            main.append("user root")
        broker = MosquittoBroker(workdir, port=store_port, config_text="\n".join(main) + "\n" + text)
        broker.start()
        _wait_for_port(hq_port)
        return cls(workdir, broker, hq_port, files / "server-ca.pem", stores_ca, hq_ca)

    def _identity(self, ca: trustme.CA, common_name: str) -> TlsFiles:
        directory = self.workdir / "clients" / common_name
        directory.mkdir(parents=True, exist_ok=True)
        cert = ca.issue_cert(f"{common_name.replace('.', '-')}.clients.test", common_name=common_name)
        cert.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
        cert.private_key_pem.write_to_path(str(directory / "client.key"))
        return TlsFiles(
            ca=self.server_ca,
            server_cert=self.workdir / "etc" / "broker.pem",
            server_key=self.workdir / "etc" / "broker.key",
            client_cert=directory / "client.pem",
            client_key=directory / "client.key",
        )

    def as_store(self, store_id: str) -> MosquittoBroker:
        """The stores' listener, seen by a client holding the certificate of store `store_id` (CN = store id)."""
        return MosquittoBroker(self.workdir, port=self.broker.port, tls=self._identity(self._stores_ca, store_id))

    def as_head_office(self, identity: str = "hq.ops") -> MosquittoBroker:
        """Head office's listener, seen by a client holding the certificate `identity`."""
        return MosquittoBroker(self.workdir, port=self.hq_port, tls=self._identity(self._hq_ca, identity))

    @property
    def log(self) -> str:
        return self.broker.log

    def stop(self) -> None:
        self.broker.kill()
