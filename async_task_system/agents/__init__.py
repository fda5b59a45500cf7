"""Agents: ``AsyncAgent`` and ``create_async_agent``, the LLM's task tools and guidance, suspended
conversations, ``ScriptedModel`` for offline runs, and model configuration from ``.env``.

Layer 3: built on the core; the subsystems (remote, runtimes, server, ...) may import it.
"""
