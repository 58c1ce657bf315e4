"""``graphexec.exceptions``: the error classes under the name Ray users import them by.

``from graphexec.exceptions import ActorDiedError`` works like ``from ray.exceptions
import ...``. The classes are defined in :mod:`graphexec.errors`.
"""

from graphexec.errors import *  # noqa: F403
from graphexec.errors import __all__  # noqa: F401
