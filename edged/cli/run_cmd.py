"""``edged run``: start the daemon (see edged.daemon.service and docs/service.md)."""

from __future__ import annotations

import argparse

from edged.cli.common import add_common, settings_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "run",
        help="run the daemon: streams, inbox, ZeroMQ requests and results",
        description=(
            "Run until SIGTERM. Tells systemd READY=1 after warm-up (Type=notify), pets the "
            "watchdog while jobs make progress, reloads the config on SIGHUP."
        ),
    )
    add_common(parser)
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    # Imported after logging is configured: module-level loggers bind at import time.
    from edged.daemon.service import Service

    overrides = {"log_level": args.log_level} if args.log_level else {}
    return Service(settings, config_file=args.config, overrides=overrides).run()
