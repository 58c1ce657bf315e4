"""The per-node shared-memory object store (DESIGN.md §3, issue 3).

* :mod:`~graphexec.store.arena` -- the allocator: which byte ranges of the arena are used.
* :mod:`~graphexec.store.layout` -- how an object's frames sit in its region.
* :mod:`~graphexec.store.mapping` -- one process's mapping of the arena: write, read zero-copy.
* :mod:`~graphexec.store.paths` -- store and spill directories, the arena file, stale cleanup.
* :mod:`~graphexec.store.manager` -- the node's bookkeeping: leases, LRU spilling, freeing.

Nothing is re-exported: importers name the submodule they need.
"""
