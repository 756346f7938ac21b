"""Host keys: how known_hosts names a host, OpenSSH fingerprints, and the policy that refuses
a key no known_hosts file lists.  Fabric itself would auto-add unknown keys, so the session puts
``reject_unknown_keys()`` on every connection (and jump host); an unknown or changed key is
refused, never accepted silently."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paramiko


SYSTEM_KNOWN_HOSTS = (Path("/etc/ssh/ssh_known_hosts"), Path("~/.ssh/known_hosts"))


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a host key."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def hostspec(host: str, port: int) -> str:
    """How known_hosts names a host: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def split_hostspec(spec: str) -> tuple[str, int]:
    if spec.startswith("[") and "]:" in spec:
        host, port = spec[1:].split("]:", 1)
        return host, int(port)
    return spec, 22


class UnlistedHostKey(Exception):
    """Raised from the host-key policy; turned into ``UnknownHostKey`` by the session."""

    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


def reject_unknown_keys() -> paramiko.MissingHostKeyPolicy:
    import paramiko

    class RejectUnknown(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                             key: paramiko.PKey) -> None:
            raise UnlistedHostKey(hostname, key)

    return RejectUnknown()
