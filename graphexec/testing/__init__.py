"""Test harness used by ``tests/`` (and by anyone testing code built on graphexec).

Submodules, each imported on its own so that importing one costs nothing of the others:

* :mod:`graphexec.testing.leaks` -- checks that no process, thread or shared-memory entry
  outlives a test; ``tests/conftest.py`` runs them around every test.
* :mod:`graphexec.testing.procs` -- ``MultiNodeCluster``: a real-process cluster of
  several node managers on this machine, for chaos tests (kill workers or whole nodes).

This package may use the whole of graphexec, but nothing in graphexec may import it.
"""
