"""Actors: the eager, stateful extension of the graph (DESIGN.md §2-3).

- ``actor.py``: ``ActorClass`` (``@graphexec.remote`` on a class), ``ActorHandle``,
  ``ActorMethod`` and ``graphexec.method``;
- ``caller.py``: the caller's side: one link per actor, calls sent straight to the
  actor's worker, results owned by the caller;
- ``pool.py``: ``ActorPool``; ``queue.py``: ``Queue`` (``graphexec.util``).

The scheduler's record of actors and their lifecycle state machine is in
``graphexec/scheduler/actors.py``; the actor inside its worker process in
``graphexec/worker/actor.py`` (the layering keeps server code out of this package).
Submodules are imported on use: ``import graphexec`` stays fast.
"""
