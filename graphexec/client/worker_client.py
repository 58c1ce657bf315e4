"""The client that lives inside a worker process, for nested tasks.

It shares the worker's event loop; a task calling ``get`` from its executor thread
blocks only that thread, and tells the worker (and so the scheduler) that its CPU is
free meanwhile, so a pool whose every slot waits on children cannot deadlock.
"""

from __future__ import annotations

import asyncio
from typing import Any

from graphexec._context import set_current_client
from graphexec.client.client import Client
from graphexec.client.refs import ObjectRef

__all__ = ["install_worker_client"]


async def install_worker_client(worker: Any) -> Client:
    client = Client(worker.scheduler_address, token=worker.token)
    client._loop = asyncio.get_running_loop()
    worker.client = client
    worker.make_ref = lambda key: ObjectRef(key, None, client)
    await client.start_async()
    client.store_factory = worker.ensure_store  # nested gets read the node's store in place
    set_current_client(client)
    return client
