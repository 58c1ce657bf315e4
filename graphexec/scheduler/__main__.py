"""``python -m graphexec.scheduler``: run a scheduler process.

The token comes from the ``GRAPHEXEC_TOKEN`` environment variable (never the command
line, which other users can read). ``--fd`` adopts a listening socket the parent already
bound, so clients can connect while this process is still starting.
"""

from __future__ import annotations

import argparse
import os
import socket

from graphexec._process import configure_logging, die_with_parent, run_server
from graphexec.scheduler.server import Scheduler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m graphexec.scheduler")
    parser.add_argument("--address", default="tcp://127.0.0.1:0")
    parser.add_argument("--fd", type=int, default=None, help="adopt this listening socket")
    parser.add_argument("--owner-pid", type=int, default=None, help="exit when this process exits")
    parser.add_argument("--validate", action="store_true")
    parser.add_argument("--log-dir", default=None, help="where job logs go (jobs/<id>.log)")
    args = parser.parse_args(argv)
    if args.owner_pid:
        die_with_parent(args.owner_pid)
    configure_logging("scheduler")
    token = os.environ.get("GRAPHEXEC_TOKEN", "")
    if not token:
        parser.error("GRAPHEXEC_TOKEN must be set")
    sock = socket.socket(fileno=args.fd) if args.fd is not None else None
    scheduler = Scheduler(
        token=token, address=args.address, sock=sock, validate=args.validate, log_dir=args.log_dir
    )
    run_server(scheduler.start, scheduler.close, scheduler.finished.wait, owner_pid=args.owner_pid)


if __name__ == "__main__":
    main()
