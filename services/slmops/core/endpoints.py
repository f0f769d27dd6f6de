"""Calling OpenAI-compatible endpoints: what synthesis (teachers) and evaluation (targets) share."""

from __future__ import annotations

import openai

from slmops.core import secret_refs


def resolve_api_key(env_name: str) -> str:
    """The key held by the allowed environment variable env_name; "none" when no name is given."""
    if not env_name:
        return "none"
    return secret_refs.read_env_secret(env_name, "api_key_env")


def describe_error(exc: BaseException, base_url: str = "") -> str:
    """A one-line reason: the HTTP error the server gave, or the connection problem and where."""
    if isinstance(exc, openai.APIStatusError):
        return exc.message
    where = f" ({base_url})" if base_url else ""
    return f"{type(exc).__name__}: {exc}{where}"
