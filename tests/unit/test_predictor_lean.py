"""KServe imported without its Kubernetes client and pandas' pyarrow backend (predictor/lean.py)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from slmops.predictor.lean import import_kserve
import_kserve()
import kserve
from kserve import ModelServer, Model
from kserve.protocol.infer_type import InferRequest
loaded = {m: m in sys.modules for m in ("kubernetes", "pyarrow", "kserve.model_server")}
import pyarrow  # still importable afterwards
import_kserve()  # a no-op now
try:
    kserve.KServeClient(config_file="/nonexistent/kubeconfig")
except Exception as exc:
    error = type(exc).__name__
else:
    error = None
print(json.dumps({"loaded": loaded, "pyarrow": pyarrow.__version__ != "",
                  "client_loaded_on_use": "kubernetes" in sys.modules, "error": error}))
"""


def test_kserve_serves_without_kubernetes_and_loads_the_client_on_first_use():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["loaded"] == {"kubernetes": False, "pyarrow": False, "kserve.model_server": True}
    assert seen["pyarrow"] is True
    assert seen["client_loaded_on_use"] is True  # the real client (and kubernetes) came on first use
    assert seen["error"] is not None  # ... and it read the (missing) kubeconfig, as the real one does
