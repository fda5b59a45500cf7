"""Which LLM to use: ``.env`` (API_KEY, BASE_URL, MODEL_ID) or nothing, never a guess."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["LLMSettings", "llm_settings_from_env", "model_from_env"]


@dataclass(frozen=True)
class LLMSettings:
    model_id: str
    api_key: str
    base_url: str | None


def llm_settings_from_env(
    dotenv_path: str | None = None, load_dotenv_file: bool = True
) -> LLMSettings | None:
    """Read API_KEY, BASE_URL and MODEL_ID (after loading ``.env`` if present); None unless MODEL_ID and API_KEY are set."""
    if load_dotenv_file:
        from dotenv import find_dotenv, load_dotenv

        # The .env of the directory the user works in (not of wherever this package is installed).
        load_dotenv(dotenv_path=dotenv_path or find_dotenv(usecwd=True), override=False)
    model_id = os.getenv("MODEL_ID", "").strip()
    api_key = os.getenv("API_KEY", "").strip()
    base_url = os.getenv("BASE_URL", "").strip() or None
    if not model_id or not api_key:
        return None
    return LLMSettings(model_id=model_id, api_key=api_key, base_url=base_url)


def model_from_env(dotenv_path: str | None = None, **model_kwargs: Any) -> Any | None:
    """A ``LiteLLMModel`` built from the environment, or None when no LLM is configured."""
    settings = llm_settings_from_env(dotenv_path)
    if settings is None:
        return None
    # litellm otherwise fetches its model price list from the internet at import time.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from smolagents import LiteLLMModel

    return LiteLLMModel(
        model_id=settings.model_id, api_key=settings.api_key, api_base=settings.base_url, **model_kwargs
    )
