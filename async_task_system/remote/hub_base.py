"""What both hubs share, by its import path: it lives in :mod:`.transports.hub_base`."""

from __future__ import annotations

from .transports.hub_base import HubBase, Link, RegisterRefused

__all__ = ["HubBase", "Link", "RegisterRefused"]
