"""The ``/etc`` of an isolated run: only what programs need, never the host's secrets (standard
library only; used by :mod:`._init` while it builds a run's root).

A root worker's scripts are root without capabilities: every root-owned file visible to them is
readable (``/etc/shadow``, ``/etc/ssh`` host keys, ``/etc/ssl/private``...). So ``/etc`` is a
small read-only tmpfs holding copies of the files on :data:`FILES` (``passwd`` and ``group``
with their password fields replaced by ``x``), the symbolic links among them as links, and the
directories on :data:`DIRECTORIES` bound read-only. Anything else of the host's ``/etc`` is not
there; a program that needs more gets it with ``read_paths``.
"""

import os

FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "nsswitch.conf",
    "host.conf",
    "hosts",
    "hostname",
    "resolv.conf",
    "gai.conf",
    "networks",
    "protocols",
    "services",
    "ethertypes",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "lsb-release",
    "issue",
    "mime.types",
    "magic",
    "magic.mime",
    "mailcap",
    "locale.alias",
    "locale.conf",
    "environment",
    "profile",
    "bash.bashrc",
    "inputrc",
    "shells",
    "ca-certificates.conf",
    "ssl/openssl.cnf",
    "machine-id",
)
"""Copied (a symbolic link stays one). ``passwd`` and ``group`` are copied without passwords."""

DIRECTORIES = (
    "alternatives",
    "ld.so.conf.d",
    "ssl/certs",
    "ca-certificates",
    "pki/ca-trust",
    "pki/tls/certs",
    "crypto-policies",
    "fonts",
    "profile.d",
    "python3",
    "terminfo",
    "xml",
    "sgml",
    "perl",
)
"""Bound read-only, when the host has them; also every ``/etc/python3.*`` and ``/etc/java-*``."""

_MAX_COPY = 4 * 1024 * 1024


def _without_passwords(text):
    lines = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > 2:
            fields[1] = "x"
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"


def _copy(source, target, transform=None):
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return
    if not os.path.isfile(source) or os.path.getsize(source) > _MAX_COPY:
        return
    with open(source, "rb") as handle:
        data = handle.read()
    if transform is not None:
        data = transform(data.decode("utf-8", errors="replace")).encode()
    with open(target, "wb") as handle:
        handle.write(data)
    os.chmod(target, 0o644)


def build(stage, mount, bind, flags):
    """Make ``stage``/etc; ``mount`` and ``bind`` are :mod:`._init`'s, ``flags`` its
    ``(MS_REMOUNT, MS_RDONLY, MS_NOSUID, MS_NODEV)``."""
    remount, rdonly, nosuid, nodev = flags
    target = stage + "/etc"
    os.makedirs(target, exist_ok=True)
    mount("tmpfs", target, "tmpfs", nosuid | nodev, "size=16m,mode=0755")
    for name in ("passwd", "group"):
        if os.path.isfile("/etc/" + name):
            _copy("/etc/" + name, f"{target}/{name}", _without_passwords)
    for name in FILES:
        if os.path.lexists("/etc/" + name):
            os.makedirs(os.path.dirname(f"{target}/{name}"), exist_ok=True)
            _copy("/etc/" + name, f"{target}/{name}")
    extra = [n for n in sorted(os.listdir("/etc")) if n.startswith(("python3.", "java-"))]
    for name in (*DIRECTORIES, *extra):
        path = "/etc/" + name
        if os.path.islink(path):
            os.makedirs(os.path.dirname(f"{target}/{name}"), exist_ok=True)
            os.symlink(os.readlink(path), f"{target}/{name}")
        elif os.path.isdir(path):
            bind(stage, path)
    mount(None, target, None, remount | rdonly | nosuid | nodev, "size=16m,mode=0755")
