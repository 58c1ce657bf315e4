"""Optional TLS for every TCP connection of a cluster, configured by environment.

``GRAPHEXEC_TLS_CERT`` and ``GRAPHEXEC_TLS_KEY`` (PEM files) turn TLS on: every server
socket presents that certificate and every client presents it too (mutual TLS, as Ray
does with ``RAY_USE_TLS``). ``GRAPHEXEC_TLS_CA`` makes both sides verify the peer's
certificate against that CA (host names are not checked: nodes are reached by address).
Without a CA the link is encrypted but peers are not verified by TLS; the cluster token's
HMAC handshake, which runs inside TLS either way, still authenticates every connection.

All processes of a cluster need the same settings: ``graphexec start --tls-cert/--tls-key
[--tls-ca]`` passes them to the processes it starts; clients set the variables. Unix
sockets between processes of one machine (actor calls) stay in clear text.
"""

from __future__ import annotations

import functools
import os
import ssl

__all__ = ["client_context", "server_context", "tls_enabled"]


def _settings() -> tuple[str, str, str]:
    return (
        os.environ.get("GRAPHEXEC_TLS_CERT", ""),
        os.environ.get("GRAPHEXEC_TLS_KEY", ""),
        os.environ.get("GRAPHEXEC_TLS_CA", ""),
    )


def tls_enabled() -> bool:
    cert, key, _ = _settings()
    if bool(cert) != bool(key):
        raise ValueError("set both GRAPHEXEC_TLS_CERT and GRAPHEXEC_TLS_KEY (or neither)")
    return bool(cert)


def server_context() -> ssl.SSLContext | None:
    """The context servers listen with, or None when TLS is off."""
    return _context(ssl.Purpose.CLIENT_AUTH, *_settings()) if tls_enabled() else None


def client_context() -> ssl.SSLContext | None:
    """The context clients connect with, or None when TLS is off."""
    return _context(ssl.Purpose.SERVER_AUTH, *_settings()) if tls_enabled() else None


@functools.lru_cache(maxsize=8)
def _context(purpose: ssl.Purpose, cert: str, key: str, ca: str) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(purpose, cafile=ca or None)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED if ca else ssl.CERT_NONE
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise ValueError(
            f"cannot set up TLS from GRAPHEXEC_TLS_CERT={cert!r}, GRAPHEXEC_TLS_KEY={key!r}, "
            f"GRAPHEXEC_TLS_CA={ca!r}: {err}"
        ) from err
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
