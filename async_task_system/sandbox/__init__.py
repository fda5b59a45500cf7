"""The one runner of processes: scripts with time, memory, process, file and output limits, each
under its own supervisor, its whole process tree killed on timeout, cancel or parent death."""

from .process import *  # noqa: F403
from .process import __all__  # noqa: F401
