"""TLS on every TCP connection of a cluster (``graphexec/comm/tls.py``), with real certs.

A CA signs the cluster's certificate; every process gets ``GRAPHEXEC_TLS_*`` from the
environment. Checked: work runs (tasks, store traffic, actor calls over TCP), the
scheduler speaks only TLS, and a peer whose certificate the CA did not sign is refused.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading

import numpy as np
import pytest

import graphexec as ge
from graphexec._context import current_client
from graphexec.comm import connect
from graphexec.comm.blocking import (
    BlockingComm,
    blocking_connect,
    blocking_listener,
    serve_handshake,
)
from graphexec.errors import CommClosedError, ProtocolError

pytestmark = pytest.mark.allow_leaks("threads")


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = str(tmp_path_factory.mktemp("tls"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "2", "-subj", "/CN=graphexec-test-ca", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
             "-subj", "/CN=graphexec-node", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "node.pem", "-days", "2", cwd=d)  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key",
             "-out", "rogue.pem", "-days", "2", "-subj", "/CN=rogue", cwd=d)  # fmt: skip
    return d


def _use(monkeypatch, certs: str, name: str = "node") -> None:
    monkeypatch.setenv("GRAPHEXEC_TLS_CERT", f"{certs}/{name}.pem")
    monkeypatch.setenv("GRAPHEXEC_TLS_KEY", f"{certs}/{name}.key")
    monkeypatch.setenv("GRAPHEXEC_TLS_CA", f"{certs}/ca.pem")


@ge.remote
def total(array):
    return float(array.sum())


@ge.remote
class Echo:
    def echo(self, x):
        return x


def test_a_cluster_with_tls(certs, monkeypatch):
    _use(monkeypatch, certs)
    ge.init(num_cpus=2)
    try:
        array = np.ones(2_000_000)  # 16 MB: through the node's store
        assert ge.get(total.remote(ge.put(array))) == 2_000_000.0
        echo = Echo.remote()
        assert ge.get([echo.echo.remote(i) for i in range(50)]) == list(range(50))

        client = current_client()
        host, port = client.scheduler_address.removeprefix("tcp://").rsplit(":", 1)
        # the scheduler speaks TLS, with the CA-signed certificate
        ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
        ctx.check_hostname = False
        ctx.load_cert_chain(f"{certs}/node.pem", f"{certs}/node.key")
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            assert tls.getpeercert()["subject"] == ((("commonName", "graphexec-node"),),)

        # a peer without TLS, even with the right token, gets nowhere
        monkeypatch.delenv("GRAPHEXEC_TLS_CERT")
        monkeypatch.delenv("GRAPHEXEC_TLS_KEY")

        async def plain() -> None:
            comm = await connect(client.scheduler_address, token=client.token, timeout=5)
            await comm.close()

        with pytest.raises(CommClosedError):
            asyncio.run(plain())

        # a peer whose certificate the CA did not sign is refused
        _use(monkeypatch, certs, "rogue")
        with pytest.raises(CommClosedError):
            asyncio.run(plain())
    finally:
        _use(monkeypatch, certs)
        ge.shutdown()


def test_blocking_connections_with_tls(certs, monkeypatch):
    """The actor-call transport: TLS on TCP, verified both ways."""
    _use(monkeypatch, certs)
    listener, address = blocking_listener("127.0.0.1")
    errors: list[BaseException] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                comm = BlockingComm(serve_handshake(conn, "tok"))
                try:
                    for header, frames in comm.read_batch(timeout=10):
                        comm.send(header, frames)
                finally:
                    comm.close()
            except (ProtocolError, CommClosedError, OSError) as err:
                errors.append(err)
            finally:
                conn.close()

    thread = threading.Thread(target=serve, name="graphexec-test-tls-serve")
    thread.start()
    try:
        comm = blocking_connect(address, "tok")
        assert isinstance(comm.sock, ssl.SSLSocket)
        comm.send([{"op": "hi"}], [b"x" * 100_000])
        ((header, frames),) = comm.read_batch(timeout=10)
        assert header == [{"op": "hi"}] and frames == [b"x" * 100_000]
        comm.close()

        _use(monkeypatch, certs, "rogue")
        with pytest.raises((ProtocolError, OSError)):
            blocking_connect(address, "tok", timeout=5)
    finally:
        thread.join(30)
        listener.close()
    assert len(errors) == 1  # the rogue connection, refused by the server


def test_cli_head_with_tls(certs, tmp_path):
    """``graphexec start --head --tls-*``: status and ``init(address="auto")`` use TLS."""
    import json
    import os
    import sys

    from graphexec.testing import leaks

    home = str(tmp_path / "gh")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPHEXEC_")}
    env["GRAPHEXEC_HOME"] = home

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "graphexec", *args],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    started = cli(
        "start", "--head", "--port", "0", "--num-cpus", "1",
        "--tls-cert", f"{certs}/node.pem", "--tls-key", f"{certs}/node.key",
        "--tls-ca", f"{certs}/ca.pem",
    )  # fmt: skip
    procs = []
    try:
        assert started.returncode == 0, started.stderr
        with open(os.path.join(home, "head.json")) as f:
            head = json.load(f)
        for pid in (head["scheduler"]["pid"], head["node"]["pid"]):
            proc = leaks.psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
        status = cli("status")
        assert status.returncode == 0 and "1 node(s)" in status.stdout, status.stderr
        driver = subprocess.run(
            [sys.executable, "-c",
             "import graphexec as ge; ge.init(address='auto'); "
             "print(ge.get(ge.remote(lambda: 41 + 1).remote())); ge.shutdown()"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert driver.returncode == 0 and driver.stdout.strip() == "42", driver.stderr
        # without the TLS settings (another machine that was not given them): refused
        host, port = head["address"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.settimeout(30)  # the server drops it after its 5 s handshake timeout
            assert raw.recv(64) == b""  # no greeting in clear text: the server wants TLS
    finally:
        cli("stop")
        leaks.reap_adopted(procs)
