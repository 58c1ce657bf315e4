"""``python -m graphexec.worker``: run one worker process (started by a node manager)."""

from __future__ import annotations

import argparse
import os
import sys

from graphexec._process import configure_logging, die_with_parent, run_server
from graphexec.worker.worker import Worker

SWITCH_INTERVAL = 0.0005


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m graphexec.worker")
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--cpus", type=float, default=1.0)
    parser.add_argument("--worker-id", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--owner-pid", type=int, default=None)
    parser.add_argument("--store", default="", help="the node's object store service")
    parser.add_argument("--actor", default="", help="host this actor (an actor's own process)")
    parser.add_argument(
        "--standby",
        action="store_true",
        help="import everything, then wait for one JSON line on stdin naming the actor to "
        "host ({'worker': id, 'actor': id}); exit on EOF",
    )
    args = parser.parse_args(argv)
    if args.owner_pid:
        die_with_parent(args.owner_pid)
    configure_logging("worker")
    if args.standby:
        import json

        from graphexec.client import worker_client  # noqa: F401 -- imported while idle
        from graphexec.worker import actor  # noqa: F401

        line = sys.stdin.readline()
        if not line.strip():
            return  # the node manager closed: never needed
        assignment = json.loads(line)
        args.worker_id, args.actor = assignment["worker"], assignment["actor"]
    # The loop thread and the runner threads hand work back and forth thousands of times
    # a second; with the default 5 ms GIL switch interval each handoff can stall that long.
    sys.setswitchinterval(SWITCH_INTERVAL)
    worker = Worker(
        args.scheduler,
        token=os.environ.get("GRAPHEXEC_TOKEN", ""),
        node_id=args.node,
        cpus=args.cpus,
        worker_id=args.worker_id,
        listen_address=f"tcp://{args.host}:0",
        store_address=args.store,
        actor_id=args.actor,
    )

    async def start() -> None:
        # nested tasks: a client sharing this worker's event loop
        from graphexec.client.worker_client import install_worker_client

        if args.actor:
            # an actor's constructor may get() its arguments as soon as it is sent
            await install_worker_client(worker)
            await worker.start()
        else:
            await worker.start()
            await install_worker_client(worker)

    run_server(start, worker.close, worker.finished.wait, owner_pid=args.owner_pid)


if __name__ == "__main__":
    main()
