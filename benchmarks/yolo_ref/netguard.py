"""Refuse and record every network call of this process that is not local (runs in the private
Ultralytics venv, before ``import ultralytics``; standard library only).

:func:`install` wraps ``socket.getaddrinfo`` (name lookups), ``socket.socket.connect`` /
``connect_ex`` and ``sendto`` (connections and datagrams): a lookup of a name other than localhost
or a numeric address, and a connection or datagram to an address outside the loopback range, raises
``OSError`` (what an offline machine answers, so that libraries take their offline path) and is
appended to :data:`ATTEMPTS` as ``{"call", "target", "where"}``, "where" the innermost frames
outside this file and the standard library's socket/http/urllib modules. Unix sockets and socket
pairs (multiprocessing, DataLoader workers) are not touched. With ``NETGUARD_LOG`` set, each attempt
is also appended to that file as a JSON line (attempts made in child processes, which inherit
the guard only if they import this module, are not seen otherwise).
"""
import ipaddress
import json
import os
import socket
import traceback

ATTEMPTS = []
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}
_installed = False


def _local_host(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _numeric(host) -> bool:
    try:
        ipaddress.ip_address(str(host).strip("[]").split("%")[0])
        return True
    except ValueError:
        return False


def _where(limit: int = 4):
    frames = [f for f in traceback.extract_stack()[:-3]
              if not f.filename.endswith(("netguard.py", os.sep + "socket.py"))
              and os.sep + "http" + os.sep not in f.filename and os.sep + "urllib" + os.sep not in f.filename]
    return [f"{f.filename}:{f.lineno} {f.name}" for f in frames[-limit:]]


def _refuse(call: str, target):
    record = {"call": call, "target": str(target), "where": _where()}
    ATTEMPTS.append(record)
    log = os.environ.get("NETGUARD_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
    raise OSError(f"netguard: network access refused ({call} {target})")


def install():
    """Wrap the socket functions (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    getaddrinfo = socket.getaddrinfo

    def guarded_getaddrinfo(host, port, *args, **kwargs):
        if not (_local_host(host) or _numeric(host)):
            _refuse("getaddrinfo", f"{host}:{port}")
        return getaddrinfo(host, port, *args, **kwargs)

    socket.getaddrinfo = guarded_getaddrinfo

    def wrap(name):
        original = getattr(socket.socket, name)

        def guarded(self, *args):
            address = args[-1] if name == "sendto" else args[0]
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _local_host(address[0]):
                _refuse(name, f"{address[0]}:{address[1]}")
            return original(self, *args)

        setattr(socket.socket, name, guarded)

    for name in ("connect", "connect_ex", "sendto"):
        wrap(name)
