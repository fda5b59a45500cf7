"""``python -m async_task_system demo`` is ``async-agent demo``."""

from .cli import main

raise SystemExit(main())
