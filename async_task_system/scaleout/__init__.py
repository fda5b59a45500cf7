"""Scale-out on a Dask cluster, behind the core's executor seam."""

from .dask import *  # noqa: F403
from .dask import __all__  # noqa: F401
