"""Collaboration: agents asking agents (directory, requests as tasks), and the A2A adapter."""

from .collaboration import *  # noqa: F403
from .collaboration import __all__  # noqa: F401
