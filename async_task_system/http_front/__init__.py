"""The HTTP front of the package's HTTP servers (the platform's REST API, the A2A server): uvicorn
on h11 with a head timeout, connection limits that a flood of half-open connections cannot
exhaust, bounded bodies and no request smuggling. See :mod:`.server`."""

from .server import FrontGuard, FrontLimits, HttpServer, error_response, listen, start_server

__all__ = ["FrontGuard", "FrontLimits", "HttpServer", "error_response", "listen", "start_server"]
