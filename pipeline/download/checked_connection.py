"""Connections that check the address they connect to, after DNS and for every redirect hop.

Hosts are resolved by us (inside the fetch's deadline) and every resolved address is checked at
connect time against the policy in force; we connect to the very address we checked, so a DNS answer
that changes between a check and the connect (DNS rebinding) cannot slip through. The TLS handshake
runs on a socket the deadline watchdog can shut down.
"""

from __future__ import annotations

import http.client
import socket

from pipeline.download.fetch_deadline import current_deadline, resolve, track_socket
from pipeline.download.fetch_policy import BlockedAddress, FetchError, current_policy


def checked_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
    """socket.create_connection, but only to addresses the policy allows (checked after DNS)."""
    host, port = address
    policy = current_policy()
    infos = resolve(host, port)
    allowed, refusals = [], []
    for family, type_, proto, _, sockaddr in infos:
        why = policy.address_refusal(sockaddr[0])
        if why is None:
            allowed.append((family, type_, proto, sockaddr))
        else:
            refusals.append(f"{sockaddr[0]} ({why})")
    if not allowed:
        raise BlockedAddress(f"{host} -> {', '.join(dict.fromkeys(refusals))}")
    last: OSError | None = None
    for family, type_, proto, sockaddr in allowed:
        sock = socket.socket(family, type_, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            track_socket(sock)
            sock.connect(sockaddr)
            return sock
        except FetchError:
            sock.close()
            raise
        except OSError as err:
            sock.close()
            last = err
    if isinstance(last, ConnectionRefusedError):
        raise FetchError(f"connection refused by {host}:{port}")
    if isinstance(last, TimeoutError):
        raise FetchError(f"timeout connecting to {host}:{port}")
    raise FetchError(f"cannot connect to {host}:{port}: {last}")


class SafeHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = checked_connection


class SafeHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = checked_connection

    def connect(self):
        # The handshake runs on the TLS socket, which the watchdog must be able to shut down: wrap
        # without handshaking, track the wrapped socket, then handshake (inside the deadline).
        http.client.HTTPConnection.connect(self)
        if self._tunnel_host:  # never set: the opener has no proxy handler
            raise FetchError("proxy tunnels are not supported")
        tls = self._context.wrap_socket(self.sock, server_hostname=self.host, do_handshake_on_connect=False)
        self.sock = tls
        track_socket(tls)
        try:
            tls.do_handshake()
        except (OSError, ValueError):
            entry = current_deadline()
            if entry is not None and entry.expired:
                timeout = current_policy().total_timeout
                raise FetchError(f"deadline of {timeout:g}s exceeded during the TLS handshake") from None
            raise
