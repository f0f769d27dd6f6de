"""Secrets a request may refer to, and keeping secrets out of what is printed.

A request never carries a secret: it names the environment variable that holds
one (`api_key_env`), and only names the operator allowed
(SLMOPS_ALLOWED_SECRET_ENV, fnmatch patterns such as `*_API_KEY`), so a
request cannot send AWS_SECRET_ACCESS_KEY or the service's own tokens to a URL
of its choosing. URLs in requests carry no credentials (`https://user:pass@host`).
Printed settings and service logs show `scheme://user:***@host` for any URL
with a password (SLMOPS_DATABASE_URL above all).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from urllib.parse import urlsplit

from slmops.core import settings
from slmops.core.errors import InvalidSpec, Unavailable

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# scheme://user:PASSWORD@ inside any text; the password runs to the authority's last "@".
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:)[^\s/]*@")


def allowed_patterns() -> list[str]:
    return [p.strip() for p in settings.get("allowed_secret_env").split(",") if p.strip()]


def env_name_problem(name: str) -> str:
    """Why a request may not name the environment variable name; "" when it may."""
    if not _ENV_NAME.match(name):
        return "must be an environment variable name (letters, digits, underscore)"
    patterns = allowed_patterns()
    if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
        allowed = ", ".join(patterns) or "none"
        return (f"{name} is not an environment variable requests may name for a secret "
                f"(allowed: {allowed}; the operator sets {settings.VARS['allowed_secret_env'].env})")  # fmt: skip
    return ""


def read_env_secret(name: str, field_name: str) -> str:
    """The secret held by the allowed environment variable name; Unavailable when it is unset."""
    problem = env_name_problem(name)
    if problem:
        raise InvalidSpec(field_name, problem)
    value = os.environ.get(name)
    if not value:
        raise Unavailable(
            f"environment variable {name} ({field_name}) is not set where the job runs; "
            "set it in the job's environment"
        )
    return value


def url_credentials_problem(url: str) -> str:
    """Why url may not appear in a request because it carries credentials; "" when it carries none."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@); name the key's variable in api_key_env instead"
    return ""


def redact(text: str) -> str:
    """text with the password of every URL in it replaced by ***."""
    return _URL_PASSWORD.sub(r"\1***@", text) if "://" in text else text


class RedactFilter(logging.Filter):
    """A handler filter that redacts URL passwords from messages and tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_logs(logger: logging.Logger | None = None) -> None:
    """Install RedactFilter on every handler of logger (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())
