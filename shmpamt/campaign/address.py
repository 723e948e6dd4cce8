"""A Dask scheduler address, checked before any cluster work starts.

Dask takes almost any string and only finds out it is wrong while connecting
(after its timeout, in a traceback); a campaign checks the shape first so a
typo costs one line, at once. Light on purpose (no Dask import): the command
checks the address before it loads Dask.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Final

from shmpamt.errors import UsageError

#: schemes a campaign client can use, and whether each needs TLS settings
SCHEMES: Final = {"tcp": False, "tls": True, "ws": False, "wss": True}
#: what a TLS client needs in the Dask configuration: the CA file and its certificate
#: (its key may be in the certificate file)
TLS_KEYS: Final = ("ca-file", "client.cert")

_HOST_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def check_scheduler(address: str) -> str:
    """``address`` as ``scheme://host:port`` (``tcp://`` when no scheme is given), or a
    UsageError naming what is wrong with it."""
    where = "scheduler"
    text = address.strip()
    if not text:
        raise UsageError("the scheduler address is empty (give tcp://HOST:PORT)", where)
    scheme, sep, loc = text.partition("://")
    if not sep:
        scheme, loc = "tcp", text
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise UsageError(
            f"{address!r}: unknown scheme {scheme!r}; use one of "
            + ", ".join(f"{s}://" for s in SCHEMES),
            where,
        )
    host, colon, port = loc.rpartition(":")
    if not colon or not port or host.endswith(":"):
        raise UsageError(f"{address!r} has no port (give {scheme}://HOST:PORT)", where)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"{address!r}: the port must be a number from 1 to 65535", where)
    if ":" in host and not host.startswith("["):
        raise UsageError(
            f"{address!r}: an IPv6 address goes in brackets, as in {scheme}://[::1]:{port}", where
        )
    if "/" in host or not _HOST_RE.fullmatch(host):
        raise UsageError(f"{address!r}: {host!r} is not a host name or address", where)
    return f"{scheme}://{host}:{int(port)}"


def check_resolves(address: str) -> None:
    """The host of a checked ``address`` has an IP address (a misspelt name fails here,
    at once, rather than after the connection timeout)."""
    loc = address.partition("://")[2]
    host, _, port = loc.rpartition(":")
    try:
        socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise UsageError(
            f"cannot resolve the scheduler's host {host!r}: {e}", "scheduler"
        ) from None


def check_tls(address: str, get: Callable[[str], object]) -> None:
    """A ``tls://`` or ``wss://`` address needs the client's TLS files in the Dask
    configuration; ``get`` reads a key of it (``dask.config.get(key, None)``)."""
    scheme = address.partition("://")[0]
    if not SCHEMES.get(scheme):
        return
    missing = [k for k in TLS_KEYS if not get(f"distributed.comm.tls.{k}")]
    if missing:
        env = ", ".join(
            "DASK_DISTRIBUTED__COMM__TLS__" + k.upper().replace(".", "__").replace("-", "_")
            for k in missing
        )
        raise UsageError(
            f"{address!r} needs TLS settings the Dask configuration does not have "
            f"(distributed.comm.tls: {', '.join(missing)}); set them in a Dask config "
            f"file or as {env}",
            "scheduler",
        )
