"""Process 1 of one isolated run, forked ahead of time by :mod:`._zygote` (standard library only).

Born by ``clone(2)`` in fresh pid, mount, IPC and UTS namespaces (and a fresh network namespace
unless the run may use the network; in a fresh user namespace too when the zygote is not root), it
does everything that does not depend on the program before any request arrives:

* a new root on a small tmpfs: the system directories (``/usr``, ``/bin``, ``/lib*``, ``/sbin``,
  ``/opt``) bound read-only, of ``/etc`` only what programs need (see :mod:`._etc`: no
  ``shadow``, no SSH or TLS keys), a minimal
  ``/dev`` (``null``, ``zero``, ``full``, ``random``, ``urandom``, ``tty``), a ``/proc`` of its
  own pid namespace (the host's and the worker's processes are not in it), the paths of the
  run's *layout* (read-only paths, writable paths: the same for every run of a worker, so the
  supervisor keeps runs of each layout ready) and the private scratch directory ``/scratch``
  (also ``/tmp``): a tmpfs of ``scratch_bytes``, gone with the namespace when the run ends;
* ``pivot_root`` into it, the host's root detached, the root remounted read-only; every
  capability dropped from the bounding and ambient sets and ``no_new_privs`` set (they hold for
  every process started from here on);

then it waits for its request (argv, environment, working directory, limits, and
stdin/stdout/stderr as descriptors), applies the limits to itself (rlimits, another user) and
starts the program with ``posix_spawn`` (a ``vfork``: no copy of this interpreter). It stays as
the namespace's init, reaping orphans; when the program ends it kills every process left in the
namespace (``kill(-1, SIGKILL)`` from a namespace's init reaches all of them, whatever their
session or group) and reaps them all, and only then reports the status (and whether the scratch
directory was full) and exits: when the report arrives, nothing of the run is running.
"""

import ctypes
import json
import os
import platform
import resource
import signal
import socket
import time

import _etc

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
CLONE_NEWIPC = 0x08000000
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
PR_CAP_AMBIENT_RAISE = 2
ROOT_FILE_CAPS = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
SCRATCH = "/scratch"
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _set_capabilities(effective, inheritable):
    """This process's effective (``None``: unchanged) and inheritable capabilities, the permitted
    ones kept (version 3 of ``capget``/``capset``; capabilities below 32 only)."""
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    if effective is not None:
        data[0].effective, data[1].effective = sum(1 << cap for cap in effective), 0
    data[0].inheritable, data[1].inheritable = sum(1 << cap for cap in inheritable), 0
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _check(result, what):
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def mount(source, target, fstype, flags, data=None):
    _check(
        _libc.mount(
            None if source is None else source.encode(),
            target.encode(),
            None if fstype is None else fstype.encode(),
            ctypes.c_ulong(flags),
            None if data is None else data.encode(),
        ),
        f"mount {target}",
    )


def _locked_flags(path):
    """The flags of the mount ``path`` is on that a remount must keep (locked in a user namespace)."""
    flags = os.statvfs(path).f_flag
    return flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _bind(stage, path, writable=False, target=None):
    """Bind ``path`` (file or directory) at the same place under ``stage`` (or at ``target``);
    read-only unless ``writable``."""
    if target is None:
        target = stage + path
        if os.path.lexists(target) and os.path.ismount(target):
            return
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
    mount(path, target, None, MS_BIND | MS_REC)
    flags = _locked_flags(target) | MS_NOSUID | (0 if writable else MS_RDONLY)
    mount(None, target, None, MS_REMOUNT | MS_BIND | flags)


def _map_user(uid, gid):
    """Map our own ids in the fresh user namespace (as ``unshare --map-user`` does)."""
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny")
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(f"{gid} {gid} 1")


def prepare(conf, stage, layout):
    """Build the new root under ``stage`` (a directory of the host's, now ours to mount on) with
    the paths of ``layout``, pivot into it and drop what no program of the run may have."""
    if conf.get("userns") and not conf.get("map_by_parent"):
        _map_user(conf["uid"], conf["gid"])
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), stage + path)
        elif os.path.isdir(path):
            _bind(stage, path)
    _etc.build(stage, mount, _bind, (MS_REMOUNT, MS_RDONLY, MS_NOSUID, MS_NODEV))
    os.makedirs(stage + "/dev", exist_ok=True)
    mount("tmpfs", stage + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            os.close(os.open(f"{stage}/dev/{name}", os.O_WRONLY | os.O_CREAT, 0o644))
            mount("/dev/" + name, f"{stage}/dev/{name}", None, MS_BIND)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
    ):
        os.symlink(target, f"{stage}/dev/{name}")
    os.symlink("/proc/self/fd/2", f"{stage}/dev/stderr")
    mount(None, stage + "/dev", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    os.makedirs(stage + "/proc", exist_ok=True)
    mount("proc", stage + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in PROC_READ_ONLY:  # a root run without capabilities may still write these
        if os.path.exists(stage + path):
            _bind(stage, stage + path, target=stage + path)
    size = int(layout.get("scratch_bytes") or 64 * 1024 * 1024)
    for path in (SCRATCH, "/tmp"):
        os.makedirs(stage + path, exist_ok=True)
    mount("tmpfs", stage + SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=1777")
    mount(stage + SCRATCH, stage + "/tmp", None, MS_BIND)
    # after /tmp: a path under it is bound over the scratch directory
    writable = layout.get("write_paths") or ()
    for path in (*(conf.get("read_paths") or ()), *(layout.get("read_paths") or ())):
        if os.path.exists(path) and path not in writable:  # a path given both ways is writable
            _bind(stage, path)
    for path in writable:
        if os.path.exists(path):
            _bind(stage, path, writable=True)
    _pivot(stage)
    _drop_privileges(ROOT_FILE_CAPS if conf.get("map_by_parent") else ())


def _pivot(stage):
    os.chdir(stage)
    number = _PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: unknown machine {platform.machine()}")
    _check(_libc.syscall(number, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the old root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _drop_privileges(keep=()):
    """Of every process started from here on: no capability can be had back (bounding and ambient
    sets empty but for ``keep``, the file-permission ones a root worker's nobody programs get)
    and none gained by ``exec`` (``no_new_privs``). This init keeps its own effective
    capabilities, which only ``setuid`` and renewing the run need now."""
    last = 63
    try:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            last = int(handle.read())
    except (OSError, ValueError):
        pass
    for cap in range(last + 1):
        if cap not in keep:
            _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0)
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0), "no_new_privs")


def _limit_self(req):
    """The limits of the program, set on this process and inherited by ``posix_spawn``."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for kind, key in ((resource.RLIMIT_AS, "memory_bytes"), (resource.RLIMIT_FSIZE, "file_bytes")):
        if req.get(key):
            hard = resource.getrlimit(kind)[1]
            value = req[key] if hard == resource.RLIM_INFINITY else min(req[key], hard)
            resource.setrlimit(kind, (value, value))
    if req.get("cpu_seconds"):
        seconds = max(1, int(req["cpu_seconds"] + 0.999))
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        top = seconds + 1 if hard == resource.RLIM_INFINITY else min(seconds + 1, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (min(seconds, top), top))
    if req.get("max_processes"):
        # The kernel's backstop, counted in the run's user namespace alone: twice the limit, so a
        # tree past the limit lives long enough for the supervisor's scan to see it (and to name
        # the limit), yet no fork bomb can swamp the host between two scans.
        limit = 2 * int(req["max_processes"]) + 1
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
    user = req.get("user")
    if user is not None:
        # The program's user for the one spawn that follows: real and effective ids change, the
        # saved ones stay 0 so this init can take root (and its capabilities) back afterwards
        # (see :func:`_back_to_root`); ``execve`` sets the program's saved ids to its own.
        os.setgroups([])
        os.setresgid(int(user[1]), int(user[1]), 0)
        os.setresuid(int(user[0]), int(user[0]), 0)
        if req.get("root_files"):
            # A root worker's program runs as nobody so that RLIMIT_NPROC holds, yet reads and
            # writes what it sees as root would: the two file-permission capabilities, in this
            # user namespace only, passed to the program as ambient ones (no other capability).
            _set_capabilities(ROOT_FILE_CAPS, ROOT_FILE_CAPS)  # effective: exec needs them too
            for cap in ROOT_FILE_CAPS:
                _check(
                    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, ctypes.c_ulong(cap), 0, 0), "ambient"
                )


def _back_to_root(req):
    """After the spawn: this init's own ids again (needed to renew the run's mounts). The program
    keeps its user, and with it ``RLIMIT_NPROC``, which the kernel never applies to uid 0."""
    if req.get("user") is not None:
        _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)
        if req.get("root_files"):
            _set_capabilities(None, ())


def _which(name, path):
    if "/" in name:
        return name
    for folder in (path or os.defpath).split(":"):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK, effective_ids=True):
            return candidate
    raise FileNotFoundError(2, f"No such file or directory: {name!r}")


def _end_all(child):
    """Wait for the program ``child``, reaping orphans meanwhile; then kill every process left in
    the namespace and reap until this init has no child: nothing of the run runs any more."""
    status = None
    while True:
        try:
            pid, code = os.waitpid(-1, 0)
        except ChildProcessError:
            return status
        except InterruptedError:
            continue
        if pid == child:
            status = code
            break
    while True:
        try:
            os.kill(-1, signal.SIGKILL)  # every process of this pid namespace but its init
        except OSError:
            pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return status
        except InterruptedError:
            continue


def reusable(conf, layout, req):
    """Whether this init may serve another run after ``req``: nothing of a run survives its end
    (every process is killed and reaped, the scratch directory and the IPC namespace are made
    anew, the rest is read-only or the network namespace's loopback, which is down and holds no
    state once its processes are gone; a program's user was set for its spawn alone) unless a
    bound path (the layout's, or the interpreter's installation, e.g. a virtual
    environment under ``/tmp``) lies in the scratch directory: renewing it would hide that path."""
    paths = (
        *(conf.get("read_paths") or ()),
        *(layout.get("read_paths") or ()),
        *(layout.get("write_paths") or ()),
    )
    return not any(p.startswith(("/tmp/", SCRATCH + "/")) for p in paths)


def _renew(layout):
    """A fresh scratch directory and IPC namespace for the next run."""
    os.chdir("/")
    for path in ("/tmp", SCRATCH):
        _check(_libc.umount2(path.encode(), MNT_DETACH), f"umount {path}")
    size = int(layout.get("scratch_bytes") or 64 * 1024 * 1024)
    mount("tmpfs", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=1777")
    mount(SCRATCH, "/tmp", None, MS_BIND)
    _check(_libc.unshare(CLONE_NEWIPC), "unshare the IPC namespace")


def _cpu():
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def serve(sock, conf, stage, layout):
    """The init of one run, or of several in turn (see :func:`reusable`): prepare, then for each
    request start the program, end every process of the run, report; exit when not reused."""
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    try:
        if conf.get("map_by_parent"):
            answer = sock.recv(4096)  # the zygote writes this namespace's id maps first
            if answer != b"mapped":
                raise OSError(answer.decode(errors="replace") or "the sandbox supervisor is gone")
        prepare(conf, stage, layout)
    except OSError as exc:
        sock.send(json.dumps({"error": str(exc)}).encode())
        return
    sock.send(b'{"ready": true}')
    uses = int(conf.get("reuse") or 0)
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 22, 3)
        except OSError:
            return
        if not data:
            return  # the zygote is gone or shut this one down
        req = json.loads(data)
        status = _run(sock, req, fds)
        if status is None:
            return
        full = False
        try:
            stat = os.statvfs(SCRATCH)
            full = stat.f_bavail * stat.f_frsize < 128 * 1024
        except OSError:
            pass
        uses -= 1
        again = uses > 0 and reusable(conf, layout, req)
        sock.send(
            json.dumps({"status": status, "scratch_full": full, "again": again, "cpu": _cpu()}).encode()
        )
        if not again:
            return
        try:
            _renew(layout)
        except OSError as exc:
            sock.send(json.dumps({"error": f"sandbox init could not renew the run: {exc}"}).encode())
            return


def _run(sock, req, fds):
    """Start the program of ``req`` and end every process of the run; its wait status, or
    ``None`` when it could not start (the error is reported)."""
    for fd in fds:
        os.set_inheritable(fd, False)
    try:
        os.chdir(req.get("cwd") or SCRATCH)
        _limit_self(req)
        env = req.get("env") or {}
        argv = req["argv"]
        stdin, stdout, stderr = fds
        child = os.posix_spawn(
            _which(argv[0], env.get("PATH")),
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin, 0),
                (os.POSIX_SPAWN_DUP2, stdout, 1),
                (os.POSIX_SPAWN_DUP2, stderr, 2),
            ],
            setsid=True,
            setsigmask=(),
            setsigdef=(
                signal.SIGTERM,
                signal.SIGINT,
                signal.SIGHUP,
                signal.SIGPIPE,
                signal.SIGCHLD,
                signal.SIGXFSZ,
            ),
        )
    except (OSError, KeyError, ValueError, TypeError) as exc:
        sock.send(json.dumps({"error": f"could not start the program: {exc}"}).encode())
        return None
    finally:
        _back_to_root(req)
        for fd in fds:
            os.close(fd)
    if req.get("notify_start"):
        sock.send(json.dumps({"started": time.time()}).encode())
    return _end_all(child)
