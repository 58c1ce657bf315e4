"""A whole cluster in this process, over the ``inproc`` transport, for fast tests.

The scheduler, the workers and the client share one event loop on a background thread
(named ``graphexec-inproc-loop``); user functions still run on the workers' executor
threads, so nested tasks, blocking ``get`` and errors behave as on a real cluster. Only
processes and sockets are missing: use the real-process tests for those.

>>> with InProcessCluster(workers=2) as cluster:  # doctest: +SKIP
...     ...  # graphexec.get / .remote work here; the cluster is the current client
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import uuid
from types import TracebackType
from typing import Any

from graphexec._context import current_client, set_current_client
from graphexec.client.client import Client
from graphexec.client.refs import ObjectRef
from graphexec.scheduler.server import Scheduler
from graphexec.worker.worker import Worker

__all__ = ["InProcessCluster"]


class InProcessCluster:
    """Scheduler + ``workers`` workers on one node + a current client, all in-process."""

    def __init__(
        self,
        workers: int = 2,
        *,
        cpus_per_worker: float = 1.0,
        resources: dict[str, float] | None = None,
        validate: bool = True,
    ) -> None:
        self.n_workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.resources = resources or {}
        self.validate = validate
        self.token = secrets.token_hex(16)
        self.name = uuid.uuid4().hex[:8]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="graphexec-inproc-loop", daemon=True
        )
        self.scheduler: Scheduler | None = None
        self.workers: list[Worker] = []
        self.client: Client | None = None
        self._previous: Any = None

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.scheduler = Scheduler(
            token=self.token, address=f"inproc://sched-{self.name}", validate=self.validate
        )
        await self.scheduler.start()
        total = {"CPU": self.cpus_per_worker * self.n_workers, **self.resources}
        self.scheduler.state.handle_add_node(f"node-{self.name}", total)
        for _ in range(self.n_workers):
            await self.add_worker()
        client = Client(self.scheduler.address, token=self.token)
        await client.start_async()
        self.client = client
        for worker in self.workers:  # nested refs in arguments become this client's refs
            worker.make_ref = self._make_ref
        # wait until every worker registered, so tests see the whole cluster
        for _ in range(1000):
            if len(self.scheduler.state.workers) == len(self.workers):
                break
            await asyncio.sleep(0.001)

    def _make_ref(self, key: str) -> ObjectRef[Any]:
        return ObjectRef(key, None, self.client)

    async def add_worker(self) -> Worker:
        assert self.scheduler is not None
        worker = Worker(
            self.scheduler.address,
            token=self.token,
            node_id=f"node-{self.name}",
            cpus=self.cpus_per_worker,
            validate=self.validate,
            listen_address=f"inproc://worker-{uuid.uuid4().hex[:8]}",
        )
        await worker.start()
        if self.client is not None:
            worker.make_ref = self._make_ref
        self.workers.append(worker)
        return worker

    async def _stop(self) -> None:
        if self.client is not None:
            await self.client.close_async()
        for worker in self.workers:
            await worker.close()
        if self.scheduler is not None:
            await self.scheduler.close()

    def __enter__(self) -> InProcessCluster:
        self.thread.start()
        try:
            self.run(self._start())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self._previous = current_client(required=False)
        set_current_client(self.client)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        set_current_client(self._previous)
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def validate_state(self) -> None:
        """Check the scheduler's invariants (runs on the loop thread)."""
        assert self.scheduler is not None
        state = self.scheduler.state

        async def check() -> None:
            state.validate_state()

        self.run(check())
