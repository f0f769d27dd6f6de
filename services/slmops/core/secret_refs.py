"""Secrets a request may refer to, where they may go, and keeping secrets out of what is printed.

A request never carries a secret: it names the environment variable that holds
one (`api_key_env`), and only names the operator allowed
(SLMOPS_ALLOWED_SECRET_ENV, fnmatch patterns such as `*_API_KEY`). The
platform's own credentials (SLMOPS_*, AWS_*, RAY_*, OTEL_*, the clouds' and the
database's: RESERVED_PREFIXES) are never such a name, whatever the patterns say.

A named secret goes only where the operator sent it (SLMOPS_SECRET_HOSTS,
`NAME=host[,host...];NAME2=...`, hosts as names, `*.domain`, IPs or CIDRs); a
name not listed there goes to loopback hosts only (a stand-in teacher on
127.0.0.1). Over plain http:// a secret goes only to loopback hosts and the
hosts of SLMOPS_PLAIN_HTTP_HOSTS. The service checks the base URL a request
pairs the name with (`destination_problem`), and the job checks it again when
it reads the secret (`read_env_secret`), so a job never sends it elsewhere.

URLs in requests carry no credentials (`https://user:pass@host`). Printed
settings and service logs show `scheme://user:***@host` for any URL with a
password (SLMOPS_DATABASE_URL above all).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from urllib.parse import urlsplit

from slmops.core import egress, settings
from slmops.core.errors import InvalidSpec, Unavailable

# The platform's own credentials: never a secret a request may name.
RESERVED_PREFIXES = ("SLMOPS_", "AWS_", "RAY_", "OTEL_", "GOOGLE_", "GCP_", "GCLOUD_", "AZURE_", "ARM_",
                     "KUBE", "MINIO_", "PG", "VAULT_")  # fmt: skip

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
    if name.upper().startswith(RESERVED_PREFIXES):
        reserved = ", ".join(p + "*" for p in RESERVED_PREFIXES)
        return (f"{name} holds one of the platform's own credentials ({reserved}); a request may never "
                f"name it, whatever {settings.VARS['allowed_secret_env'].env} allows")  # fmt: skip
    return ""


def secret_hosts() -> dict[str, list[str]]:
    """SLMOPS_SECRET_HOSTS as {name: [host pattern, ...]}; ValueError naming the setting when malformed."""
    env = settings.VARS["secret_hosts"].env
    mapping: dict[str, list[str]] = {}
    for entry in settings.get("secret_hosts").split(";"):
        if not entry.strip():
            continue
        name, sep, hosts = entry.partition("=")
        if not sep or not _ENV_NAME.match(name.strip()) or not egress.split_hosts(hosts):
            raise ValueError(f"{env} has an entry {entry.strip()!r} that is not NAME=host[,host...]")
        mapping.setdefault(name.strip(), []).extend(egress.split_hosts(hosts))
    return mapping


def destination_problem(name: str, url: str, *, resolve: bool = False) -> str:
    """Why the secret in name may not be sent to url; "" when it may.

    resolve (where the job runs): a host allowed for being loopback must resolve to loopback only.
    """
    host, scheme = egress.host_of(url), url.split("://", 1)[0].lower()
    if not host:
        return f"{name} has no host to go to"
    env = settings.VARS["secret_hosts"].env
    try:
        listed = secret_hosts().get(name)
    except ValueError as exc:
        return str(exc)
    loopback = egress.is_loopback(host)
    if listed is not None and not egress.host_matches(host, listed):
        return f"{name} may be sent only to {', '.join(listed)} (the operator lists its hosts in {env}), not {host}"
    if listed is None and not loopback:
        return (f"{name} may be sent to loopback hosts only, not {host}; the operator allows "
                f"that host with {env}={name}={host}")  # fmt: skip
    if scheme == "http" and not loopback:
        plain = egress.split_hosts(settings.get("plain_http_hosts"))
        if not egress.host_matches(host, plain):
            return (f"{name} would travel unencrypted over http:// to {host}; use https://, or the operator "
                    f"lists the host in {settings.VARS['plain_http_hosts'].env}")  # fmt: skip
    if resolve and loopback and listed is None and egress.parse_ip(host) is None:
        try:
            addresses = egress.resolve(host, 0)
        except Exception:  # a host that does not resolve gets nothing
            addresses = []
        if not addresses or not all(egress.effective(ip).is_loopback for ip in addresses):
            return f"{name} may be sent to loopback hosts only, and {host} does not resolve to loopback only"
    return ""


def read_env_secret(name: str, url: str, field_name: str) -> str:
    """The secret held by the allowed environment variable name, for a request to url; InvalidSpec when
    the name or the destination is not allowed, Unavailable when the variable is unset."""
    problem = env_name_problem(name) or destination_problem(name, url, resolve=True)
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
