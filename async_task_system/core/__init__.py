"""The core: one task manager and its parts, task data, errors, and the task context.

Layer 1. It imports nothing of the package above it (agents, subsystems, the platform); the
subsystems build on its public seams (task control, targets, the change feed). Public names are
re-exported from :mod:`async_task_system`.
"""
