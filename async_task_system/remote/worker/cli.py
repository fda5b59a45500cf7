"""``async-agent worker``: the daemon's flags, their checks, and the process around :class:`~.daemon.WorkerDaemon`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from ...sandbox.process import DEFAULT_ALLOW_ENV
from ..protocol import LANGUAGES, ProtocolError, check_labels
from .config import WorkerConfig
from .daemon import WorkerDaemon
from .protect import protect_secret

__all__ = ["config_from_args", "configure_parser", "run"]

logger = logging.getLogger("async_task_system.remote.worker")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``async-agent worker`` flags."""
    parser.add_argument(
        "--hub",
        required=True,
        help="hub address: ws://127.0.0.1:8765 (WebSocket) or grpc://127.0.0.1:50051 (gRPC)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("ASYNC_AGENT_TOKEN"),
        help="shared secret of the hub (default: $ASYNC_AGENT_TOKEN; prefer the variable or --token-file, "
        "argv is visible to ps until the worker has started)",
    )
    parser.add_argument(
        "--token-file",
        default=None,
        help="read the token from this file (keep it unreadable to the user scripts run as, see --run-as)",
    )
    parser.add_argument(
        "--name", default=socket.gethostname(), help="worker name, unique per hub (default: host name)"
    )
    parser.add_argument("--max-concurrent", type=int, default=5, help="scripts run at once (default 5)")
    parser.add_argument(
        "--capabilities", default=",".join(LANGUAGES), help="comma-separated: shell,python (default both)"
    )
    parser.add_argument(
        "--max-output-bytes",
        type=int,
        default=256 * 1024,
        help="bytes of stdout and of stderr kept per script",
    )
    parser.add_argument(
        "--cpu-seconds", type=float, default=300.0, help="RLIMIT_CPU per script in seconds (0 = no limit)"
    )
    parser.add_argument(
        "--memory-mb", type=int, default=1024, help="RLIMIT_AS per script in MiB (0 = no limit)"
    )
    parser.add_argument(
        "--max-file-mb", type=int, default=256, help="RLIMIT_FSIZE per script in MiB (0 = no limit)"
    )
    parser.add_argument(
        "--max-processes",
        type=int,
        default=64,
        help="processes of one script's tree at once; more and the tree is killed (0 = no limit)",
    )
    parser.add_argument(
        "--run-as",
        default=None,
        help="when the worker runs as root, run scripts as this user (name or uid); without it, a root "
        "worker's scripts run as root with no capabilities",
    )
    parser.add_argument(
        "--allow-env",
        default=",".join(DEFAULT_ALLOW_ENV),
        help="comma-separated variables passed from the worker's environment to scripts",
    )
    parser.add_argument(
        "--workdir", default=None, help="working directory of scripts (default: the current one)"
    )
    parser.add_argument(
        "--python", default=sys.executable or "python3", help="interpreter for python scripts"
    )
    parser.add_argument(
        "--default-timeout", type=float, default=60.0, help="seconds, when a request gives none"
    )
    parser.add_argument(
        "--reconnect-max", type=float, default=30.0, help="longest back-off between reconnects"
    )
    parser.add_argument(
        "--once", action="store_true", help="exit when the connection ends instead of reconnecting"
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label requests can select this worker by, e.g. --label region=eu (repeatable)",
    )
    parser.add_argument(
        "--tools-dir",
        default=None,
        help="directory of runtime tools (JS, native, WASM, Python) this worker runs; entries outside it are "
        "refused; without it the worker offers no runtimes",
    )
    parser.add_argument(
        "--kill-grace",
        type=float,
        default=2.0,
        help="seconds between SIGTERM and SIGKILL when a script is cancelled or times out (default 2)",
    )
    parser.add_argument(
        "--allow-network",
        action="store_true",
        help="isolated scripts may use the network (default: none, not even loopback); label network=on",
    )
    parser.add_argument(
        "--no-isolation",
        action="store_true",
        help="run scripts unisolated (they see this host's files, network and processes); needed where "
        "namespaces are unavailable, else the worker refuses to start",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    capabilities = tuple(c.strip() for c in args.capabilities.split(",") if c.strip())
    unknown = [c for c in capabilities if c not in LANGUAGES]
    if unknown:
        raise SystemExit(f"unknown capabilities {unknown}: use {', '.join(LANGUAGES)}")
    if args.max_concurrent < 1:
        raise SystemExit("--max-concurrent must be at least 1")
    if args.run_as is not None:
        import pwd

        try:
            pwd.getpwuid(int(args.run_as)) if args.run_as.isdigit() else pwd.getpwnam(args.run_as)
        except KeyError:
            raise SystemExit(f"--run-as: no user {args.run_as!r}") from None
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--label {item!r}: use KEY=VALUE")
        labels[key.strip()] = value.strip()
    try:
        check_labels(labels, "--label")
    except ProtocolError as exc:
        raise SystemExit(str(exc)) from None
    if args.tools_dir is not None and not os.path.isdir(args.tools_dir):
        raise SystemExit(f"--tools-dir {args.tools_dir!r} is not a directory")
    if args.kill_grace < 0:
        raise SystemExit("--kill-grace must be 0 or more seconds")
    return WorkerConfig(
        hub=args.hub,
        labels=labels,
        tools_dir=args.tools_dir,
        kill_grace=args.kill_grace,
        token=args.token,
        name=args.name,
        max_concurrent=args.max_concurrent,
        capabilities=capabilities,
        max_output_bytes=args.max_output_bytes,
        cpu_seconds=args.cpu_seconds or None,
        memory_mb=args.memory_mb or None,
        file_size_mb=args.max_file_mb or None,
        max_processes=args.max_processes or None,
        run_as=args.run_as,
        allow_env=tuple(v.strip() for v in args.allow_env.split(",") if v.strip()),
        python=args.python,
        workdir=args.workdir,
        default_timeout=args.default_timeout,
        reconnect_max=args.reconnect_max,
        once=args.once,
        isolation=not getattr(args, "no_isolation", False),
        allow_network=bool(getattr(args, "allow_network", False)),
    )


def run(args: argparse.Namespace) -> int:
    """Run the worker daemon until SIGTERM/SIGINT; the exit code says why it stopped."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s worker %(levelname)s %(message)s",
    )
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as handle:
                args.token = handle.read().strip()
        except OSError as exc:
            print(f"async-agent worker: cannot read --token-file: {exc.strerror}", file=sys.stderr)
            return 2
    if not args.token:
        print(
            "async-agent worker: a token is required (--token, --token-file or $ASYNC_AGENT_TOKEN)",
            file=sys.stderr,
        )
        return 2
    for problem in protect_secret(args.token):
        logger.warning("%s", problem)
    config = config_from_args(args)
    if config.isolation:
        from ...sandbox.isolation import isolation_status

        status = isolation_status()
        if not status.available:
            print(
                f"async-agent worker: scripts cannot be isolated here ({status.reason}); start with "
                "--no-isolation to run them unisolated (they then see this host's files, network and processes)",
                file=sys.stderr,
            )
            return 2
        network = "with the network" if config.allow_network else "without network"
        logger.info("scripts run isolated (%s), %s", status.reason, network)
    else:
        logger.warning(
            "scripts run UNISOLATED (--no-isolation): they see this host's files, network and processes"
        )

    async def main() -> int:
        daemon = WorkerDaemon(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, daemon.stop)
        return await daemon.run()

    return asyncio.run(main())
