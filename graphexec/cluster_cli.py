"""Cluster commands of the ``graphexec`` CLI: start, stop, status, submit, job.

``graphexec start --head`` starts a scheduler and a node manager on this machine as
daemons (they outlive the command), writes the cluster token to a file only the owner
can read, and records what it started (``graphexec/client/cluster_dir.py``).
``graphexec start --address HOST:PORT`` joins this machine to a cluster with one more
node manager. ``graphexec stop`` stops exactly the processes this machine's ``start``
commands recorded. ``status``, ``submit`` and ``job`` talk to the scheduler as a client.

Every command that connects needs the token: ``--token-file``, else ``GRAPHEXEC_TOKEN``,
else the token file of the head this machine started.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import psutil

from graphexec.client.cluster_dir import (
    cluster_dir,
    local_head,
    read_json,
    read_token,
    token_for,
    use_head_tls,
    write_json,
    write_token,
)

__all__ = ["add_cluster_commands"]

DEFAULT_PORT = 6380
#: how long ``start`` waits for the node to register, and ``stop`` for a clean exit
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class CommandError(Exception):
    """A command cannot go on; the message says what to do."""


# ---------------------------------------------------------------------- helpers


def _server_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _spawn(cmd: list[str], log_path: str, env: dict[str, str], **kw: Any) -> psutil.Process:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a daemon: not killed with this terminal
            **kw,
        )
    return psutil.Process(proc.pid)


def _record(proc: psutil.Process) -> dict[str, Any]:
    """What ``stop`` needs to be sure a pid is still the process we started."""
    return {"pid": proc.pid, "create_time": proc.create_time()}


def _ours(rec: dict[str, Any]) -> psutil.Process | None:
    """The recorded process if it still runs (same pid *and* start time), else None."""
    try:
        proc = psutil.Process(int(rec["pid"]))
        if abs(proc.create_time() - float(rec["create_time"])) > 0.01:
            return None  # the pid was reused by another program
        return proc
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return None


def _advertised_host(bind_host: str, towards: str = "") -> str:
    """The address other machines reach this one at (for 0.0.0.0 or a join)."""
    if bind_host not in ("0.0.0.0", ""):
        return bind_host
    target = towards or "192.0.2.1"  # any routable address: no packet is sent
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((target, 9))
        return str(s.getsockname()[0])
    return "127.0.0.1"


def _resolve_token(args: argparse.Namespace, address: str) -> str:
    if getattr(args, "token_file", None):
        return read_token(args.token_file)
    token = os.environ.get("GRAPHEXEC_TOKEN", "") or token_for(address)
    if not token:
        raise CommandError(
            f"no token for the cluster at {address}: pass --token-file (a copy of the "
            "head's token file) or set GRAPHEXEC_TOKEN"
        )
    return token


def _resolve_address(args: argparse.Namespace) -> str:
    address = getattr(args, "address", None) or os.environ.get("GRAPHEXEC_ADDRESS", "")
    if not address:
        head = local_head()
        if head is None:
            raise CommandError(
                "no cluster address: pass --address HOST:PORT, set GRAPHEXEC_ADDRESS, or "
                "start a head on this machine with `graphexec start --head`"
            )
        address = head["address"]
        use_head_tls(head)
    return address.removeprefix("tcp://")


class _Connection:
    """A short-lived client of the scheduler, for commands."""

    def __init__(self, args: argparse.Namespace) -> None:
        from graphexec.client.client import Client

        self.address = _resolve_address(args)
        token = _resolve_token(args, self.address)
        self.client = Client(f"tcp://{self.address}", token=token)
        try:
            self.client.start_in_thread(timeout=10.0)
        except Exception as err:
            self.client.close()
            raise CommandError(f"cannot connect to the cluster at {self.address}: {err}") from err

    def request(self, op: dict[str, Any], timeout: float = 30.0) -> Any:
        try:
            return self.client.request(op, timeout=timeout)
        except RuntimeError as err:  # the scheduler's error answer
            raise CommandError(str(err)) from err

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()


def _wait_for_node(args: argparse.Namespace, node_id: str, procs: list[psutil.Process]) -> dict:
    deadline = time.monotonic() + START_TIMEOUT
    last: BaseException | None = None
    while time.monotonic() < deadline:
        for proc in procs:
            if not _running(proc):
                raise CommandError(f"process {proc.pid} exited (see its log below)")
        try:
            with _Connection(args) as conn:
                while time.monotonic() < deadline:
                    info = conn.request({"op": "cluster-info"})
                    if any(n["node_id"] == node_id for n in info["nodes"]):
                        return dict(info)
                    time.sleep(0.1)
        except CommandError as err:
            last = err
            time.sleep(0.2)
    raise CommandError(f"the node did not register within {START_TIMEOUT:.0f} s: {last}")


def _tail(path: str, lines: int = 15) -> str:
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])
    return ""


def _node_args(args: argparse.Namespace, address: str, host: str, node_id: str) -> list[str]:
    out = ["--scheduler", address, "--host", host, "--node-id", node_id]
    out += ["--resources", json.dumps(args.resources), "--cluster", node_id[-8:]]
    if args.num_cpus is not None:
        out += ["--num-cpus", str(args.num_cpus)]
    if args.num_gpus is not None:
        out += ["--num-gpus", str(args.num_gpus)]
    if args.object_store_memory is not None:
        out += ["--object-store-memory", str(args.object_store_memory)]
    return out


# ---------------------------------------------------------------------- start


def start(args: argparse.Namespace) -> int:
    if args.head == bool(args.address):
        raise CommandError("use either --head (start a cluster) or --address HOST:PORT (join one)")
    tls = _tls_settings(args)
    os.environ.update(tls)  # for the processes started here, and this command's client
    if tls:
        from graphexec.comm.tls import server_context

        server_context()  # unreadable files: a clear error now, not in a daemon's log
    return _start_head(args, tls) if args.head else _join(args)


def _tls_settings(args: argparse.Namespace) -> dict[str, str]:
    given = {"GRAPHEXEC_TLS_CERT": args.tls_cert, "GRAPHEXEC_TLS_KEY": args.tls_key}
    if args.tls_ca:
        given["GRAPHEXEC_TLS_CA"] = args.tls_ca
    if not any(given.values()):
        return {}
    if not (args.tls_cert and args.tls_key):
        raise CommandError("TLS needs both --tls-cert and --tls-key (and --tls-ca to verify peers)")
    return {k: os.path.abspath(v) for k, v in given.items() if v}


def _start_head(args: argparse.Namespace, tls: dict[str, str]) -> int:
    home = cluster_dir(create=True)
    head = local_head()
    if head is not None:
        raise CommandError(
            f"this machine already runs a head at {head['address']}; `graphexec stop` first"
        )
    logs = os.path.join(home, "logs")
    token = secrets.token_hex(32)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        sock.close()
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: {err}; choose another --port"
        ) from err
    sock.listen(1024)
    port = sock.getsockname()[1]
    host = _advertised_host(args.host)
    address = f"{host}:{port}"
    env = dict(os.environ, GRAPHEXEC_TOKEN=token)
    env.pop("GRAPHEXEC_ADDRESS", None)
    node_id = f"node-{secrets.token_hex(4)}"
    token_path = os.path.join(home, "token")
    write_token(token_path, token)
    procs: list[psutil.Process] = []
    try:
        procs.append(
            _spawn(
                _server_cmd("graphexec.scheduler", "--fd", str(sock.fileno()), "--log-dir", logs),
                os.path.join(logs, "scheduler.log"),
                env,
                pass_fds=(sock.fileno(),),
            )
        )
        sock.close()
        procs.append(
            _spawn(
                _server_cmd(
                    "graphexec.worker.nodemanager",
                    *_node_args(args, f"tcp://{address}", host, node_id),
                ),
                os.path.join(logs, f"{node_id}.log"),
                env,
            )
        )
        write_json(
            os.path.join(home, "head.json"),
            {
                "address": address,
                "scheduler": _record(procs[0]),
                "scheduler_pid": procs[0].pid,
                "node": {**_record(procs[1]), "node_id": node_id},
                "log_dir": logs,
                "started": time.time(),
                "tls": tls,
            },
        )
        args.address, args.token_file = address, token_path
        info = _wait_for_node(args, node_id, procs)
    except BaseException as err:
        _stop_processes(list(reversed(procs)))
        _remove(os.path.join(home, "head.json"), token_path)
        detail = _tail(os.path.join(logs, "scheduler.log")) + _tail(
            os.path.join(logs, f"{node_id}.log")
        )
        if isinstance(err, CommandError) and detail:
            raise CommandError(f"{err}\nlast log lines:\n{detail}") from err
        raise
    cpus = info["cluster_resources"].get("CPU", 0)
    print(f"graphexec head started at {address} ({cpus:g} CPUs, node {node_id})")
    print(f"  token file:   {token_path} (mode 0600: only you can read it)")
    print(f"  logs:         {logs}")
    print("  connect on this machine:   graphexec.init(address='auto')")
    print(
        f"  connect from elsewhere:    GRAPHEXEC_TOKEN=<token> ... graphexec.init(address='{address}')"
    )
    print(
        f"  join another machine:      graphexec start --address {address} "
        "--token-file <a copy of the token file>"
    )
    if args.host == "127.0.0.1":
        print("  (listening on 127.0.0.1 only; start with --host 0.0.0.0 to accept other machines)")
    print("  stop:                      graphexec stop")
    return 0


def _join(args: argparse.Namespace) -> int:
    home = cluster_dir(create=True)
    address = args.address.removeprefix("tcp://")
    token = _resolve_token(args, address)
    sched_host = address.rpartition(":")[0]
    host = args.host if args.host != "127.0.0.1" else _advertised_host("0.0.0.0", sched_host)
    if sched_host in ("127.0.0.1", "localhost"):
        host = "127.0.0.1"
    node_id = f"node-{secrets.token_hex(4)}"
    env = dict(os.environ, GRAPHEXEC_TOKEN=token)
    env.pop("GRAPHEXEC_ADDRESS", None)
    log_path = os.path.join(home, "logs", f"{node_id}.log")
    proc = _spawn(
        _server_cmd(
            "graphexec.worker.nodemanager", *_node_args(args, f"tcp://{address}", host, node_id)
        ),
        log_path,
        env,
    )
    record_path = os.path.join(home, "nodes", f"{node_id}.json")
    write_json(record_path, {**_record(proc), "node_id": node_id, "address": address})
    try:
        info = _wait_for_node(args, node_id, [proc])
    except BaseException as err:
        _stop_processes([proc])
        _remove(record_path)
        tail = _tail(log_path)
        if isinstance(err, CommandError) and tail:
            raise CommandError(f"{err}\nlast log lines:\n{tail}") from err
        raise
    total = info["cluster_resources"].get("CPU", 0)
    print(
        f"node {node_id} joined the cluster at {address} ({len(info['nodes'])} nodes, {total:g} CPUs)"
    )
    print(f"  logs: {log_path}")
    print("  stop this node: graphexec stop")
    return 0


# ---------------------------------------------------------------------- stop


def _running(proc: psutil.Process) -> bool:
    """Still running: gone or a zombie (exited, not yet reaped by init) is not."""
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _wait_exit(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _running(p)]
    return alive


def _stop_processes(procs: list[psutil.Process]) -> list[int]:
    """SIGTERM each, wait, SIGKILL what is left; the pids that were running."""
    running = [p for p in procs if _running(p)]
    for proc in running:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    for proc in _wait_exit(running, STOP_TIMEOUT):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _wait_exit(running, 5.0)
    return [p.pid for p in running]


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def stop(args: argparse.Namespace) -> int:
    home = cluster_dir()
    stopped = 0
    for path in sorted(glob.glob(os.path.join(home, "nodes", "*.json"))):
        rec = read_json(path) or {}
        proc = _ours(rec)
        if proc is not None:
            _stop_processes([proc])
            print(f"stopped node {rec.get('node_id', '?')} (pid {proc.pid})")
            stopped += 1
        _remove(path)
    head_path = os.path.join(home, "head.json")
    head = read_json(head_path)
    if head is not None:
        node, sched = _ours(head.get("node", {})), _ours(head.get("scheduler", {}))
        if node is not None:
            _stop_processes([node])
        if sched is not None:
            _stop_processes([sched])
        if node is not None or sched is not None:
            print(f"stopped the head at {head.get('address')}")
            stopped += 1
        _remove(head_path, os.path.join(home, "token"))
    if not stopped:
        print("nothing to stop: no graphexec process started on this machine is running")
    return 0


# ---------------------------------------------------------------------- status


def status(args: argparse.Namespace) -> int:
    with _Connection(args) as conn:
        info = conn.request({"op": "cluster-info"})
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    total, avail = info["cluster_resources"], info["available_resources"]
    print(
        f"cluster at {conn.address}: {len(info['nodes'])} node(s), {info['workers']} "
        f"worker(s), {info['clients']} client(s)"
    )
    print("resources (used / total):")
    for name in sorted(total):
        if name.startswith("node:"):
            continue
        used = total[name] - avail.get(name, 0.0)
        if "memory" in name:
            print(f"  {name:<20} {used / 1e9:.1f} / {total[name] / 1e9:.1f} GB")
        else:
            print(f"  {name:<20} {used:g} / {total[name]:g}")
    print("nodes:")
    for node in info["nodes"]:
        cpus = node["resources"].get("CPU", 0)
        print(
            f"  {node['node_id']}  {node['host']}  pid {node['pid']}  {cpus:g} CPU  "
            f"{len(node['workers'])} workers  {node['store_objects']} objects in store"
        )
    tasks = info.get("tasks") or {}
    states = ", ".join(f"{k} {v}" for k, v in sorted(tasks.items())) or "none"
    print(f"tasks by state: {states}")
    actors: dict[str, int] = {}
    for actor in info.get("actors") or []:
        actors[actor["state"]] = actors.get(actor["state"], 0) + 1
    print(f"actors: {', '.join(f'{k} {v}' for k, v in sorted(actors.items())) or 'none'}")
    return 0


# ---------------------------------------------------------------------- jobs


_EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 2}


def submit(args: argparse.Namespace) -> int:
    rest = list(args.entrypoint)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        raise CommandError("nothing to run: graphexec submit -- python script.py [args]")
    entrypoint = rest[0] if len(rest) == 1 else shlex.join(rest)
    with _Connection(args) as conn:
        op: dict[str, Any] = {"op": "job-submit", "entrypoint": entrypoint, "cwd": os.getcwd()}
        if args.job_id:
            op["job_id"] = args.job_id
        job = conn.request(op)
        print(f"job {job['job_id']} submitted: {entrypoint}", file=sys.stderr)
        if args.no_wait:
            print(job["job_id"])
            return 0
        return _follow(conn, job["job_id"])


def _follow(conn: _Connection, job_id: str) -> int:
    offset = 0
    while True:
        chunk = conn.request({"op": "job-logs", "job_id": job_id, "offset": offset})
        if chunk["data"]:
            sys.stdout.write(chunk["data"])
            sys.stdout.flush()
        offset = chunk["offset"]
        if chunk["status"] != "RUNNING" and not chunk["data"]:
            info = conn.request({"op": "job-status", "job_id": job_id})
            print(
                f"job {job_id} {info['status'].lower()} (exit code {info['returncode']})",
                file=sys.stderr,
            )
            return _EXIT.get(info["status"], 1)
        if not chunk["data"]:
            time.sleep(0.2)


def job(args: argparse.Namespace) -> int:
    with _Connection(args) as conn:
        if args.action == "list":
            for info in conn.request({"op": "job-list"}):
                print(f"{info['job_id']}  {info['status']:<9}  {info['entrypoint']}")
            return 0
        if not args.job_id:
            raise CommandError(f"graphexec job {args.action} needs a job id")
        if args.action == "status":
            info = conn.request({"op": "job-status", "job_id": args.job_id})
            code = "" if info["returncode"] is None else f" (exit code {info['returncode']})"
            print(f"{info['job_id']}: {info['status']}{code}  {info['entrypoint']}")
            return 0
        if args.action == "logs":
            if args.follow:
                return _follow(conn, args.job_id)
            offset = 0
            while True:
                chunk = conn.request({"op": "job-logs", "job_id": args.job_id, "offset": offset})
                sys.stdout.write(chunk["data"])
                if not chunk["data"]:
                    return 0
                offset = chunk["offset"]
        info = conn.request({"op": "job-stop", "job_id": args.job_id})
        print(f"job {info['job_id']}: stop requested (status {info['status']})")
        return 0


# ---------------------------------------------------------------------- parser


def _resources(text: str) -> dict[str, float]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--resources must be JSON: {err}") from err
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and v >= 0 for k, v in value.items()
    ):
        raise argparse.ArgumentTypeError('--resources must map names to numbers: {"disk": 2}')
    return {k: float(v) for k, v in value.items()}


def _connect_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None, help="HOST:PORT of the scheduler")
    parser.add_argument("--token-file", default=None, help="a file holding the cluster token")


def add_cluster_commands(sub: Any) -> None:
    """Add ``start``, ``stop``, ``status``, ``submit`` and ``job`` to ``sub``."""
    p = sub.add_parser("start", help="start a head (--head) or join a cluster (--address)")
    p.add_argument("--head", action="store_true", help="start a new cluster on this machine")
    p.add_argument("--address", default=None, help="join the cluster at HOST:PORT")
    p.add_argument("--token-file", default=None, help="(join) the cluster's token file")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="(head) 0 picks a free port")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument("--num-cpus", type=float, default=None)
    p.add_argument("--num-gpus", type=float, default=None)
    p.add_argument("--resources", type=_resources, default={}, help='JSON: {"disk": 2}')
    p.add_argument("--object-store-memory", type=int, default=None, help="bytes")
    p.add_argument("--tls-cert", default=None, help="PEM certificate: TLS on every connection")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    p.add_argument("--tls-ca", default=None, help="PEM CA that must have signed every peer")
    p.set_defaults(func=start)

    p = sub.add_parser("stop", help="stop the graphexec processes this machine started")
    p.set_defaults(func=stop)

    p = sub.add_parser("status", help="nodes, resources and work of a cluster")
    _connect_options(p)
    p.add_argument("--json", action="store_true", help="print cluster_info() as JSON")
    p.set_defaults(func=status)

    p = sub.add_parser("submit", help="run a driver program on the head as a job")
    _connect_options(p)
    p.add_argument("--job-id", default=None)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- python script.py ...")
    p.set_defaults(func=submit)

    p = sub.add_parser("job", help="status, logs, stop or list of submitted jobs")
    _connect_options(p)
    p.add_argument("action", choices=["status", "logs", "stop", "list"])
    p.add_argument("job_id", nargs="?", default=None)
    p.add_argument("--follow", action="store_true", help="(logs) until the job ends")
    p.set_defaults(func=job)


def run(func: Any, args: argparse.Namespace) -> int:
    """Run a command; a :class:`CommandError` prints its message and exits 1."""
    try:
        return int(func(args))
    except (CommandError, ValueError, ConnectionError) as err:
        print(f"graphexec {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
