"""Schedules: run a tool later or repeatedly (once, interval, cron), with the LLM's tools to
manage them."""

from .engine import *  # noqa: F403
from .engine import __all__  # noqa: F401
