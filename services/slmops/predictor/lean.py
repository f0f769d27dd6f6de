"""Import KServe without what a predictor never uses, to keep the process small.

`import kserve` loads KServe's Kubernetes client (and with it the `kubernetes`
package), and pandas with its pyarrow backend: about 55 MB of resident memory
that serving one model never touches (measured on this predictor: the KServe
stack costs 165 MB resident in full, 110 MB without them). `import_kserve()`,
called before anything else imports KServe:

- puts a placeholder where `kserve.api.kserve_client` would load: its
  `KServeClient` imports the real client when someone constructs one;
- hides pyarrow from pandas while KServe imports it, so pandas starts without
  its pyarrow backend. pyarrow itself stays importable afterwards.

Nothing changes when KServe was already imported.
"""

from __future__ import annotations

import sys
import types

CLIENT_MODULE = "kserve.api.kserve_client"


class _LazyKServeClient:
    """Stands in for `kserve.KServeClient`; constructing it imports and returns the real one."""

    def __new__(cls, *args: object, **kwargs: object) -> object:
        if sys.modules.get(CLIENT_MODULE) is _PLACEHOLDER:
            del sys.modules[CLIENT_MODULE]
        from kserve.api.kserve_client import KServeClient

        return KServeClient(*args, **kwargs)


_PLACEHOLDER = types.ModuleType(CLIENT_MODULE, "placeholder: the real module loads on first use")
_PLACEHOLDER.KServeClient = _LazyKServeClient  # type: ignore[attr-defined]


def import_kserve() -> None:
    """Import KServe's serving parts lean (see the module doc); a no-op once KServe is loaded."""
    if "kserve" in sys.modules:
        return
    hidden = {name: sys.modules.get(name) for name in ("pyarrow",)}
    had_client = CLIENT_MODULE in sys.modules
    sys.modules[CLIENT_MODULE] = _PLACEHOLDER
    for name in hidden:
        if hidden[name] is None:
            sys.modules[name] = None  # type: ignore[assignment]  # import pyarrow raises ImportError
    try:
        import kserve  # noqa: F401
        import kserve.model_server  # noqa: F401
    finally:
        for name, module in hidden.items():
            if module is None:
                sys.modules.pop(name, None)
        if not had_client and sys.modules.get(CLIENT_MODULE) is _PLACEHOLDER:
            del sys.modules[CLIENT_MODULE]
