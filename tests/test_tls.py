"""TLS to a real Mosquitto that requires client certificates.

Certificates are made by the test with the openssl command: a CA, a server
certificate for 127.0.0.1/localhost, a client certificate, and the bad
cases (another CA, an expired server certificate, a certificate for another
host name).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.profile import load_catalogue
from simulators.meters import SimulatedDevice
from simulators.modbus_server import ModbusTcpServer
from tests.support import AgentProcess, Broker, Subscriber, free_port, port_open, wait_until, write_config
from tests.test_e2e import ROOM_VALUES, FixedModel

pytestmark = pytest.mark.timeout(90)


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("openssl is needed to make test certificates (apt-get install openssl)")
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN={name}", cwd=directory)


def make_cert(directory: Path, name: str, ca: str, san: str, days: str = "2", expired: bool = False) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=directory)
    (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    if not expired:
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-extfile", f"{name}.ext", "-days", days, cwd=directory)
        return
    # `openssl x509` of OpenSSL 3.0 cannot backdate; `openssl ca` can, with a minimal CA database.
    (directory / "index.txt").touch()
    (directory / "ca.cnf").write_text(
        "[ca]\ndefault_ca = test\n[test]\ndir = .\ndatabase = index.txt\nnew_certs_dir = .\n"
        f"certificate = {ca}.pem\nprivate_key = {ca}.key\nserial = serial.txt\ndefault_md = sha256\n"
        "policy = any\ncopy_extensions = none\nunique_subject = no\n[any]\ncommonName = supplied\n"
        f"[ext]\nsubjectAltName = {san}\n")
    (directory / "serial.txt").write_text("1000\n")
    openssl("ca", "-batch", "-config", "ca.cnf", "-in", f"{name}.csr", "-out", f"{name}.pem", "-extensions", "ext",
            "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    make_ca(directory, "ca")
    make_ca(directory, "other-ca")
    make_cert(directory, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    make_cert(directory, "server-expired", "ca", "IP:127.0.0.1,DNS:localhost", expired=True)
    make_cert(directory, "server-wrong-host", "ca", "DNS:broker.example.org")
    make_cert(directory, "client", "ca", "DNS:gw-test")
    return directory


def tls_broker(tmp_path: Path, pki: Path, server: str) -> tuple[Broker, int]:
    tls_port = free_port()
    broker = Broker(tmp_path / "broker", extra_conf=(
        f"listener {tls_port} 127.0.0.1\ncafile {pki / 'ca.pem'}\ncertfile {pki / (server + '.pem')}\n"
        f"keyfile {pki / (server + '.key')}\nrequire_certificate true\n"))
    broker.start()
    wait_until(lambda: port_open(tls_port), 10, "the TLS listener")
    return broker, tls_port


def run_agent(tmp_path: Path, tls_port: int, tls: dict[str, str],
              seconds_or_until: Callable[[AgentProcess], object]) -> AgentProcess:
    server = ModbusTcpServer({10: SimulatedDevice(load_catalogue().get("xy-md02"), FixedModel(ROOM_VALUES))}).start()
    config = write_config(
        tmp_path / "agent.yaml", broker_port=tls_port, buffer=tmp_path / "buffer.db",
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}],
        devices=[{"id": "room", "bus": "gw", "address": 10, "profile": "xy-md02", "interval": "1s"}],
        mqtt_extra={"tls": tls},
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        seconds_or_until(agent)
    finally:
        assert agent.stop() == 0
        server.stop()
    return agent


def test_mutual_tls_delivers(tmp_path: Path, pki: Path) -> None:
    broker, tls_port = tls_broker(tmp_path, pki, "server")
    subscriber = Subscriber(broker.port, "buildings/#").start()  # the plain listener, for the platform side
    try:
        run_agent(tmp_path, tls_port, {"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "client.pem"),
                                       "key_file": str(pki / "client.key")},
                  lambda _agent: wait_until(lambda: len(subscriber.unique_readings()) >= 4, 20, "readings over TLS"))
    finally:
        subscriber.stop()
        broker.stop()
    assert {r["value"] for r in subscriber.unique_readings().values()} == set(ROOM_VALUES.values())


@pytest.mark.parametrize(("server", "ca", "reason"), [
    ("server", "other-ca", "not trusted"),
    ("server-expired", "ca", "expired"),
    ("server-wrong-host", "ca", "mismatch"),
])
def test_untrusted_broker_is_refused_clearly_and_retried(tmp_path: Path, pki: Path, server: str, ca: str,
                                                         reason: str) -> None:
    broker, tls_port = tls_broker(tmp_path, pki, server)
    try:
        agent = run_agent(
            tmp_path, tls_port,
            {"ca_file": str(pki / f"{ca}.pem"), "cert_file": str(pki / "client.pem"), "key_file": str(pki / "client.key")},
            lambda a: wait_until(lambda: any(e.get("event") == "uplink.connect_failed" for e in a.events()), 20,
                                 "the refusal"))
    finally:
        broker.stop()
    failures = [e for e in agent.events() if e.get("event") == "uplink.connect_failed"]
    assert len(failures) == 1
    assert reason in failures[0]["error"], failures[0]["error"]
    assert failures[0]["retry_in_s"] > 0
    assert not any(e.get("event") == "uplink.connected" for e in agent.events())


def test_a_missing_client_key_is_a_config_error(tmp_path: Path, pki: Path) -> None:
    config = write_config(
        tmp_path / "agent.yaml", broker_port=free_port(), buffer=tmp_path / "buffer.db",
        buses=[{"id": "gw", "type": "modbus-tcp", "host": "127.0.0.1", "port": free_port()}],
        devices=[{"id": "room", "bus": "gw", "address": 10, "profile": "xy-md02", "interval": "1s"}],
        mqtt_extra={"tls": {"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "client.pem"),
                            "key_file": str(tmp_path / "absent.key")}},
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    assert agent.proc is not None
    assert agent.proc.wait(timeout=20) == 78
    text = agent.log.read_text()
    assert "uplink.mqtt.tls" in text and "Traceback" not in text
