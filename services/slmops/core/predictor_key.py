"""The API key the platform's own predictors require (SLMOPS_PREDICTOR_API_KEY_FILE).

`slmops up` makes the file beside the gRPC token; in a cluster the chart mounts
a Secret there. The serving service gives it to the predictors it starts and
checks it at each deployment's router; the platform's own clients (synthesis
from a deployed teacher, evaluation of a deployment, the CLI) send it. A
request never names it: it is not one of the secrets a request may refer to.
"""

from __future__ import annotations

from pathlib import Path

from slmops.core import auth, settings
from slmops.core.errors import Unavailable

FILE_NAME = "predictor-key"


def configured_file() -> str:
    return settings.get("predictor_api_key_file")


def read() -> str:
    """The key ("" when no file is configured); Unavailable when the configured file cannot be read."""
    path = configured_file()
    if not path:
        return ""
    try:
        key = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        env = settings.VARS["predictor_api_key_file"].env
        raise Unavailable(
            f"cannot read the predictor API key ({env}={path}): {exc.strerror or exc}"
        ) from None
    if not key:
        raise Unavailable(f"the predictor API key file {path} is empty")
    return key


def ensure(data_dir: Path) -> Path:
    """<data_dir>/auth/predictor-key, readable by this user only, made with a fresh random key if missing."""
    return auth.ensure_token_file(Path(data_dir) / "auth" / FILE_NAME)
