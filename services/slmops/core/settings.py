"""Every setting the platform reads, declared once.

Precedence: an explicit argument, then the environment variable, then the
default. Each entry says what it does; `slmops status --settings` prints them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Var:
    env: str
    default: str
    help: str


VARS: dict[str, Var] = {
    "data_dir": Var(
        "SLMOPS_DATA_DIR", "~/.slmops", "Root of all local state: job databases, artifacts, logs, traces."
    ),
    "artifact_root": Var(
        "SLMOPS_ARTIFACT_ROOT",
        "",
        "Where new artifacts are written (fsspec URI); empty means <data_dir>/artifacts.",
    ),
    "allowed_roots": Var(
        "SLMOPS_ALLOWED_ROOTS",
        "",
        "Extra local folders (os.pathsep-separated) that requests may read models and datasets from.",
    ),
    "allowed_schemes": Var(
        "SLMOPS_ALLOWED_SCHEMES",
        "file,s3,gs,gcs,az,abfs,abfss",
        "URI schemes (comma-separated) requests may name; file covers plain paths. local:// and chained URLs (a::b) are always refused.",
    ),
    "allowed_secret_env": Var(
        "SLMOPS_ALLOWED_SECRET_ENV",
        "*_API_KEY",
        "fnmatch patterns (comma-separated) of the environment variables a request may name as a secret (api_key_env).",
    ),
    "secret_hosts": Var(
        "SLMOPS_SECRET_HOSTS",
        "",
        "Where each secret a request names may be sent: NAME=host[,host...] entries separated by ';' (host: a name, *.domain or an IP); a name not listed may go to loopback only. The platform's own keys (SLMOPS_*) are never sent to a host a request names.",
    ),
    "plain_http_hosts": Var(
        "SLMOPS_PLAIN_HTTP_HOSTS",
        "",
        "Hosts (comma-separated names, *.domain or IPs) a secret may be sent to over plain http://; loopback always may.",
    ),
    "egress_allow": Var(
        "SLMOPS_EGRESS_ALLOW",
        "*",
        "Hosts and networks jobs may call (teachers, targets, judges, /metrics): comma-separated names, *.domain, IPs or CIDRs; * is any host. Link-local and cloud metadata addresses are refused unless a CIDR here names them.",
    ),
    "predictor_api_key_file": Var(
        "SLMOPS_PREDICTOR_API_KEY_FILE",
        "",
        "File holding the API key predictors require as a bearer token; `slmops up` makes one under <data_dir>/auth. The serving service gives it to its predictors and checks it at each deployment's router; synthesis and evaluation send it to the platform's own deployments only.",
    ),
    "max_input_bytes": Var(
        "SLMOPS_MAX_INPUT_BYTES",
        str(64 * 2**30),
        "The most bytes a pipeline input (prompts, dataset or model) may hold; a larger one is refused rather than hashed.",
    ),
    "max_input_files": Var(
        "SLMOPS_MAX_INPUT_FILES",
        "10000",
        "The most files (and, counted apart, the most folders) a pipeline input folder may hold; a larger one is refused rather than hashed.",
    ),
    "ray_timeout_s": Var(
        "SLMOPS_RAY_TIMEOUT_S",
        "30",
        "Seconds any one request to Ray's Jobs API (submit, status, stop, logs, the log stream's handshake) may take before it counts as failed; the services make these calls on threads of their own, apart from the database calls.",
    ),
    "log_max_bytes": Var(
        "SLMOPS_LOG_MAX_BYTES",
        str(10 * 2**20),
        "Size in bytes at which a service's log file (<data_dir>/logs/<service>.log under `slmops up`) and the local span file are rotated to <file>.1 ... <file>.3 (3 older files kept).",
    ),
    "s3_endpoint": Var(
        "AWS_ENDPOINT_URL",
        "",
        "S3 API endpoint for s3:// artifacts when it is not AWS (MinIO, an on-prem store, a test server); read by botocore and s3fs, and passed on to Ray jobs. Credentials come from the usual AWS variables or the pod's identity.",
    ),
    "database_url": Var(
        "SLMOPS_DATABASE_URL",
        "",
        "SQLAlchemy URL of the job store; empty means a SQLite file per service under <data_dir>/db.",
    ),
    "ray_address": Var(
        "RAY_ADDRESS",
        "",
        "Ray cluster for jobs: http://host:8265 (Jobs API); empty means the local head at http://127.0.0.1:8265.",
    ),
    "ray_auth_mode": Var(
        "RAY_AUTH_MODE", "", "Ray's token authentication (token or disabled); `slmops up` sets token."
    ),
    "ray_auth_token_path": Var(
        "RAY_AUTH_TOKEN_PATH",
        "",
        "File holding the Ray auth token; `slmops up` makes one under <data_dir>/ray.",
    ),
    "job_python": Var(
        "SLMOPS_JOB_PYTHON",
        "",
        "Python interpreter Ray job entrypoints run with; empty means this interpreter.",
    ),
    "job_entrypoint_cpus": Var(
        "SLMOPS_JOB_ENTRYPOINT_CPUS",
        "0",
        "CPUs every stage's Ray job driver reserves (entrypoint_num_cpus); 0: none, so the driver may run on the head. A cluster whose head has num-cpus 0 sets 1, so drivers run on a worker.",
    ),
    "job_entrypoint_memory": Var(
        "SLMOPS_JOB_ENTRYPOINT_MEMORY",
        "0",
        "Memory in bytes every stage's Ray job driver reserves (entrypoint_memory); 0: none.",
    ),
    "ray_worker_groups": Var(
        "SLMOPS_RAY_WORKER_GROUPS",
        "",
        'JSON list of the Ray worker groups the autoscaler may scale, each {"name", "maxReplicas", "cpus", "gpus", "memory" (bytes per pod, 0 unknown)}; capacity prechecks count what they could add. Empty: only the live nodes count.',
    ),
    "metrics_port": Var(
        "SLMOPS_METRICS_PORT",
        "0",
        "Port of the Prometheus /metrics endpoint each gRPC service serves on its host; 0: no endpoint.",
    ),
    "host": Var("SLMOPS_HOST", "127.0.0.1", "Address gRPC services bind to."),
    "serving_backend": Var("SLMOPS_SERVING_BACKEND", "local", "Default serving backend: local or kserve."),
    "serving_host": Var("SLMOPS_SERVING_HOST", "127.0.0.1", "Address local predictors bind to."),
    "synthesis_addr": Var("SLMOPS_SYNTHESIS_ADDR", "127.0.0.1:50051", "Where the synthesis service listens."),
    "training_addr": Var("SLMOPS_TRAINING_ADDR", "127.0.0.1:50052", "Where the training service listens."),
    "conversion_addr": Var(
        "SLMOPS_CONVERSION_ADDR", "127.0.0.1:50053", "Where the conversion service listens."
    ),
    "serving_addr": Var("SLMOPS_SERVING_ADDR", "127.0.0.1:50054", "Where the serving service listens."),
    "evaluation_addr": Var(
        "SLMOPS_EVALUATION_ADDR", "127.0.0.1:50055", "Where the evaluation service listens."
    ),
    "pipeline_addr": Var("SLMOPS_PIPELINE_ADDR", "127.0.0.1:50056", "Where the pipeline service listens."),
    "kserve_namespace": Var(
        "SLMOPS_KSERVE_NAMESPACE", "default", "Namespace of InferenceServices (kserve backend)."
    ),
    "kserve_runtime": Var(
        "SLMOPS_KSERVE_RUNTIME",
        "slmops-predictor",
        "ServingRuntime (in the InferenceServices' namespace) or ClusterServingRuntime the kserve backend names on its InferenceServices (the chart: <fullname>-predictor).",
    ),
    "kserve_service_account": Var(
        "SLMOPS_KSERVE_SERVICE_ACCOUNT",
        "",
        "Service account whose secrets KServe's storage initializer reads.",
    ),
    "kserve_deployment_mode": Var(
        "SLMOPS_KSERVE_DEPLOYMENT_MODE",
        "Standard",
        "KServe deployment mode of the InferenceServices the kserve backend creates: Standard (plain Deployments; no canary) or Knative (needed for canaries and per-revision URLs).",
    ),
    "kserve_runtime_gpu": Var(
        "SLMOPS_KSERVE_RUNTIME_GPU",
        "",
        "ServingRuntime/ClusterServingRuntime with the CUDA predictor, used when a deployment asks for GPUs; empty: GPU deployments are refused.",
    ),
    "kserve_owner": Var(
        "SLMOPS_KSERVE_OWNER",
        "slmops",
        "Value of the label slmops.io/owner on every InferenceService this serving service creates; it patches and deletes only those.",
    ),
    "kserve_expose_externally": Var(
        "SLMOPS_KSERVE_EXPOSE_EXTERNALLY",
        "false",
        "true: the InferenceServices the kserve backend creates get an external URL; by default they carry networking.kserve.io/visibility: cluster-local and are reached from inside the cluster only.",
    ),
    "shared_claim": Var(
        "SLMOPS_SHARED_CLAIM",
        "",
        "PersistentVolumeClaim holding the artifacts, mounted at SLMOPS_SHARED_MOUNT_PATH: a file:// model under that path is given to KServe as pvc://<claim>/<relative path>.",
    ),
    "shared_mount_path": Var(
        "SLMOPS_SHARED_MOUNT_PATH", "", "Where SLMOPS_SHARED_CLAIM is mounted in the services' pods."
    ),
    "otlp_endpoint": Var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "OTLP collector; empty means spans go to <data_dir>/traces/spans.jsonl.",
    ),
    "service_name": Var("OTEL_SERVICE_NAME", "slmops", "Service name on spans."),
    "lease_s": Var(
        "SLMOPS_LEASE_S",
        "30",
        "Seconds a replica's claim on a job lasts without renewal: how long a dead replica's jobs wait before another replica takes them over.",
    ),
    "job_poll_s": Var(
        "SLMOPS_JOB_POLL_S", "1.0", "How often a service polls Ray for a job's state and logs."
    ),
    "auth_token_file": Var(
        "SLMOPS_AUTH_TOKEN_FILE",
        "",
        "File holding the bearer token every gRPC call must carry (health excepted); empty: no token. `slmops up` makes one under <data_dir>/auth; clients read that one when this is empty.",
    ),
    "tls_cert_file": Var(
        "SLMOPS_TLS_CERT_FILE",
        "",
        "PEM certificate the gRPC services serve TLS with (with SLMOPS_TLS_KEY_FILE); empty: plain text.",
    ),
    "tls_key_file": Var("SLMOPS_TLS_KEY_FILE", "", "PEM private key of SLMOPS_TLS_CERT_FILE."),
    "tls_client_ca_file": Var(
        "SLMOPS_TLS_CLIENT_CA_FILE",
        "",
        "PEM CA that must sign client certificates: set, the services require mutual TLS.",
    ),
    "tls_ca_file": Var(
        "SLMOPS_TLS_CA_FILE",
        "",
        "PEM CA clients verify the services' certificates with; set (or SLMOPS_TLS_CERT_FILE set), clients use TLS.",
    ),
    "tls_client_cert_file": Var(
        "SLMOPS_TLS_CLIENT_CERT_FILE",
        "",
        "PEM certificate clients present for mutual TLS (with SLMOPS_TLS_CLIENT_KEY_FILE).",
    ),
    "tls_client_key_file": Var(
        "SLMOPS_TLS_CLIENT_KEY_FILE", "", "PEM private key of SLMOPS_TLS_CLIENT_CERT_FILE."
    ),
    "tls_server_name": Var(
        "SLMOPS_TLS_SERVER_NAME",
        "",
        "Name clients expect in the services' certificates, when it is not the address's host.",
    ),
}

SERVICES = ("synthesis", "training", "conversion", "serving", "evaluation", "pipeline")


def get(name: str, override: str | None = None) -> str:
    """A setting's value: override, then environment, then default."""
    if override not in (None, ""):
        return str(override)
    var = VARS[name]
    return os.environ.get(var.env, var.default)


def data_dir(override: str | None = None) -> Path:
    path = Path(get("data_dir", override)).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)  # local state is this user's only
    return path


def artifact_root(override: str | None = None) -> str:
    value = get("artifact_root", override)
    if value:
        return value if "://" in value else "file://" + str(Path(value).expanduser().resolve())
    root = data_dir() / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return "file://" + str(root)


def allowed_roots() -> list[str]:
    """Local folders requests may name: the data dir, the artifact root, and extras."""
    roots = [str(data_dir())]
    art = artifact_root()
    if art.startswith("file://"):
        roots.append(art[len("file://") :])
    extra = get("allowed_roots")
    roots.extend(p for p in extra.split(os.pathsep) if p)
    return roots


def database_url(service: str, override: str | None = None) -> str:
    value = get("database_url", override)
    if value:
        return value
    db_dir = data_dir() / "db"
    db_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return f"sqlite:///{db_dir / service}.db"


def ray_address(override: str | None = None) -> str:
    value = get("ray_address", override)
    if not value:
        return "http://127.0.0.1:8265"
    if value.startswith("ray://") or "://" not in value:
        # A GCS address (host:6379) is not the Jobs API; the dashboard is on 8265.
        host = value.split("://")[-1].split(":")[0]
        return f"http://{host}:8265"
    return value


def job_python() -> str:
    return get("job_python") or sys.executable


def service_addr(service: str, override: str | None = None) -> str:
    return get(f"{service}_addr", override)


def describe() -> list[tuple[str, str, str]]:
    """(variable, current value, help) for every setting."""
    return [(v.env, os.environ.get(v.env, v.default), v.help) for v in VARS.values()]
