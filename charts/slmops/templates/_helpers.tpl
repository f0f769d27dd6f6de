{{/*
Names, labels and images.
*/}}
{{- define "slmops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "slmops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "slmops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "synthesis") */}}
{{- define "slmops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slmops.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component: (dict "root" $ "component" "synthesis") */}}
{{- define "slmops.labels" -}}
helm.sh/chart: {{ include "slmops.chart" .root }}
{{ include "slmops.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: slmops
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* An slmops image: (dict "root" $ "component" "ray" "override" .Values.ray.image) */}}
{{- define "slmops.image" -}}
{{- $override := .override | default dict }}
{{- $repo := $override.repository | default (printf "%s/slmops-%s" .root.Values.image.registry .component) }}
{{- $tag := $override.tag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- if eq (toString $tag) "latest" }}
{{- fail (printf "image tag of %s is \"latest\": pin a version" .component) }}
{{- end }}
{{- printf "%s:%s" $repo (toString $tag) }}
{{- end }}

{{- define "slmops.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Service accounts: the services share one without API access; the serving
service has its own, bound to the InferenceService Role.
*/}}
{{- define "slmops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slmops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slmops.servingServiceAccountName" -}}
{{- printf "%s-serving" (include "slmops.fullname" .) }}
{{- end }}

{{/*
Addresses the pods reach each other by.
*/}}
{{- define "slmops.serviceHost" -}}
{{- printf "%s-%s.%s.svc" (include "slmops.fullname" .root) .service .root.Release.Namespace }}
{{- end }}

{{- define "slmops.rayClusterName" -}}
{{- printf "%s-ray" (include "slmops.fullname" .) }}
{{- end }}

{{- define "slmops.rayAddress" -}}
{{- if .Values.ray.create }}
{{- printf "http://%s-head-svc.%s.svc:8265" (include "slmops.rayClusterName" .) .Release.Namespace }}
{{- else }}
{{- required "ray.address is required when ray.create is false (the Jobs API of an existing Ray cluster, http://host:8265)" .Values.ray.address }}
{{- end }}
{{- end }}

{{/*
The Secret holding the Ray token and its key. With ray.create and no existingSecret,
KubeRay's RayCluster controller generates it (spec.authOptions.mode=token): a
Secret named like the RayCluster with key auth_token (KubeRay
ray-operator/controllers/ray/raycluster_controller.go, reconcileAuthSecret).
*/}}
{{- define "slmops.rayAuthSecret" -}}
{{- default (include "slmops.rayClusterName" .) .Values.ray.auth.existingSecret }}
{{- end }}

{{- define "slmops.rayAuthSecretKey" -}}
{{- if .Values.ray.auth.existingSecret }}
{{- .Values.ray.auth.existingSecretKey }}
{{- else -}}
auth_token
{{- end }}
{{- end }}

{{/* Where the services read the Ray token (RAY_AUTH_TOKEN_PATH). */}}
{{- define "slmops.rayAuthTokenPath" -}}
/var/run/slmops/ray/token
{{- end }}

{{/*
ServiceAccount of a Ray group's pods: (dict "root" $ "group" $group "head" bool).
Its own serviceAccountName, else the release's; the head with the autoscaler on
gets "" (KubeRay's autoscaler ServiceAccount), so the autoscaler's Role is not
bound to the services' account.
*/}}
{{- define "slmops.rayServiceAccountName" -}}
{{- if .group.serviceAccountName }}
{{- .group.serviceAccountName }}
{{- else if not (and .head .root.Values.ray.autoscaling.enabled) }}
{{- include "slmops.serviceAccountName" .root }}
{{- end }}
{{- end }}

{{- define "slmops.otlpEndpoint" -}}
{{- if .Values.otelCollector.enabled }}
{{- printf "http://%s-otel-collector.%s.svc:4317" (include "slmops.fullname" .) .Release.Namespace }}
{{- else }}
{{- .Values.otel.endpoint }}
{{- end }}
{{- end }}

{{- define "slmops.artifactRoot" -}}
{{- if .Values.artifacts.root }}
{{- .Values.artifacts.root }}
{{- else if .Values.artifacts.sharedClaim }}
{{- printf "file://%s/artifacts" .Values.artifacts.sharedMountPath }}
{{- end }}
{{- end }}

{{- define "slmops.kserveNamespace" -}}
{{- default .Release.Namespace .Values.serving.kserve.namespace }}
{{- end }}

{{/*
The ServiceAccount InferenceServices run as (SLMOPS_KSERVE_SERVICE_ACCOUNT):
serving.kserve.serviceAccountName when set (a workload identity of your own),
else the chart's <fullname>-storage when artifacts live in an object store
(storage-serviceaccount.yaml), else none (a shared claim needs no credentials).
*/}}
{{- define "slmops.storageServiceAccountName" -}}
{{- printf "%s-storage" (include "slmops.fullname" .) }}
{{- end }}

{{- define "slmops.createStorageServiceAccount" -}}
{{- if and .Values.services.serving.enabled (eq .Values.serving.backend "kserve") .Values.artifacts.root (not .Values.serving.kserve.serviceAccountName) -}}
true
{{- end }}
{{- end }}

{{/*
KServe's S3 settings (serving.kserve.io/s3-*) from artifacts.endpoint and
artifacts.s3: the endpoint as host[:port], https from its scheme.
*/}}
{{- define "slmops.kserveS3Annotations" -}}
{{- with .Values.artifacts.endpoint }}
serving.kserve.io/s3-endpoint: {{ regexReplaceAll "^https?://" . "" | trimSuffix "/" | quote }}
serving.kserve.io/s3-usehttps: {{ ternary "1" "0" (hasPrefix "https://" .) | quote }}
{{- end }}
{{- with .Values.artifacts.s3.region }}
serving.kserve.io/s3-region: {{ . | quote }}
{{- end }}
serving.kserve.io/s3-verifyssl: {{ ternary "1" "0" .Values.artifacts.s3.verifySsl | quote }}
{{- end }}

{{- define "slmops.kserveServiceAccount" -}}
{{- if .Values.serving.kserve.serviceAccountName }}
{{- .Values.serving.kserve.serviceAccountName }}
{{- else if include "slmops.createStorageServiceAccount" . }}
{{- include "slmops.storageServiceAccountName" . }}
{{- end }}
{{- end }}

{{/*
A Kubernetes quantity in bytes ("8Gi", "512Mi", "1G", "1073741824"); 0 when empty.
*/}}
{{- define "slmops.bytes" -}}
{{- $q := toString (. | default "0") }}
{{- $factor := 1 }}
{{- $number := $q }}
{{- range $unit := list (list "Ki" 1024) (list "Mi" 1048576) (list "Gi" 1073741824) (list "Ti" 1099511627776) (list "k" 1000) (list "M" 1000000) (list "G" 1000000000) (list "T" 1000000000000) }}
{{- if and (eq $factor 1) (hasSuffix (index $unit 0) $q) }}
{{- $factor = index $unit 1 }}
{{- $number = trimSuffix (index $unit 0) $q }}
{{- end }}
{{- end }}
{{- mulf (float64 $number) $factor | floor | int64 }}
{{- end }}

{{/* A CPU quantity as a number ("2", "500m"); 0 when empty. */}}
{{- define "slmops.cpus" -}}
{{- $q := toString (. | default "0") }}
{{- if hasSuffix "m" $q }}
{{- divf (float64 (trimSuffix "m" $q)) 1000 }}
{{- else }}
{{- float64 $q }}
{{- end }}
{{- end }}

{{/*
SLMOPS_RAY_WORKER_GROUPS: per worker group what one pod gives Ray and how many
pods the autoscaler may make. CPUs and GPUs as Ray sees them (num-cpus/num-gpus
in rayStartParams, else the container's limits, else its requests), memory in
bytes from the limits, else the requests (0: unknown).
*/}}
{{- define "slmops.rayWorkerGroupsJson" -}}
{{- $groups := list }}
{{- range $group := .Values.ray.workerGroups }}
{{- $res := $group.resources | default dict }}
{{- $limits := $res.limits | default dict }}
{{- $requests := $res.requests | default dict }}
{{- $params := $group.rayStartParams | default dict }}
{{- $cpu := index $params "num-cpus" | default (index $limits "cpu") | default (index $requests "cpu") }}
{{- $gpu := index $params "num-gpus" | default ($group.gpus | default 0) }}
{{- $memory := index $limits "memory" | default (index $requests "memory") }}
{{- $groups = append $groups (dict "name" $group.name "maxReplicas" (int $group.maxReplicas) "cpus" (include "slmops.cpus" $cpu | float64) "gpus" (float64 (toString $gpu)) "memory" (include "slmops.bytes" $memory | int64)) }}
{{- end }}
{{- toJson $groups }}
{{- end }}

{{- define "slmops.postgresqlName" -}}
{{- printf "%s-postgresql" (include "slmops.fullname" .) }}
{{- end }}

{{- define "slmops.postgresqlSecret" -}}
{{- default (include "slmops.postgresqlName" .) .Values.postgresql.auth.existingSecret }}
{{- end }}

{{/*
A random secret value that survives upgrades: (dict "root" $ "name" secretName "key" key).
`helm install/upgrade` finds the live Secret by lookup; `helm template` (Argo CD,
Flux) cannot, so it renders a new value each time: GitOps installs set the
existingSecret values, and then nothing random is rendered.
*/}}
{{- define "slmops.persistentRandom" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $existing (hasKey $existing.data .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum 32 | b64enc }}
{{- end }}
{{- end }}

{{/* Settings that contradict each other fail the render with a message to act on. */}}
{{- define "slmops.validate" -}}
{{- if and .Values.postgresql.enabled (or .Values.database.url .Values.database.existingSecret) }}
{{- fail "postgresql.enabled and database.url/database.existingSecret are exclusive: use the bundled PostgreSQL or your own database, not both" }}
{{- end }}
{{- if and .Values.ray.create .Values.ray.address }}
{{- fail "ray.address is set while ray.create is true: set ray.create=false to use an existing Ray cluster" }}
{{- end }}
{{- if and .Values.ray.create .Values.ray.auth.existingSecret (ne .Values.ray.auth.existingSecretKey "auth_token") }}
{{- fail "ray.auth.existingSecret with ray.create becomes the RayCluster's spec.authOptions.secretName, which KubeRay reads under key auth_token: set ray.auth.existingSecretKey=auth_token" }}
{{- end }}
{{- if and (not .Values.ray.create) .Values.ray.address .Values.ray.auth.enabled (not .Values.ray.auth.existingSecret) }}
{{- fail "ray.auth.enabled with an existing Ray cluster needs ray.auth.existingSecret (a Secret with that cluster's token under key ray.auth.existingSecretKey), or ray.auth.enabled=false for a cluster without token auth" }}
{{- end }}
{{- if and .Values.grpcAuth.tls.requireClientCert (not .Values.grpcAuth.tls.existingSecret) }}
{{- fail "grpcAuth.tls.requireClientCert needs grpcAuth.tls.existingSecret: a kubernetes.io/tls Secret whose ca.crt signs the client certificates" }}
{{- end }}
{{- if not (has .Values.serving.backend (list "kserve" "local")) }}
{{- fail (printf "serving.backend must be kserve or local, not %q" .Values.serving.backend) }}
{{- end }}
{{- end }}

{{/*
Environment shared by service pods and Ray pods (a Ray job reads the same
settings as the service that submitted it): data dir, artifacts, tracing, the
job interpreter. Ray auth is not here: KubeRay sets it on the Ray pods
(spec.authOptions), and the services get slmops.rayClientEnv.
*/}}
{{- define "slmops.sharedEnv" -}}
- name: SLMOPS_DATA_DIR
  value: /var/lib/slmops
- name: SLMOPS_EGRESS_ALLOW
  value: {{ .Values.egress.allow | quote }}
{{- with .Values.egress.secretHosts }}
- name: SLMOPS_SECRET_HOSTS
  value: {{ . | quote }}
{{- end }}
{{- with .Values.egress.plainHttpHosts }}
- name: SLMOPS_PLAIN_HTTP_HOSTS
  value: {{ . | quote }}
{{- end }}
- name: SLMOPS_JOB_PYTHON
  value: python
{{- with include "slmops.artifactRoot" . }}
- name: SLMOPS_ARTIFACT_ROOT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.artifacts.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.artifacts.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- if .Values.artifacts.sharedClaim }}
- name: SLMOPS_ALLOWED_ROOTS
  value: {{ .Values.artifacts.sharedMountPath | quote }}
{{- end }}
{{- with include "slmops.otlpEndpoint" . }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Artifact settings only the services need: the shared claim the kserve backend
maps file://<mount>/... to (pvc://<claim>/...), and the ServiceAccount
InferenceServices run as to read the object store.
*/}}
{{- define "slmops.artifactEnv" -}}
{{- if .Values.artifacts.sharedClaim }}
- name: SLMOPS_SHARED_CLAIM
  value: {{ .Values.artifacts.sharedClaim | quote }}
- name: SLMOPS_SHARED_MOUNT_PATH
  value: {{ .Values.artifacts.sharedMountPath | quote }}
{{- end }}
{{- with include "slmops.kserveServiceAccount" . }}
- name: SLMOPS_KSERVE_SERVICE_ACCOUNT
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
How the services submit Ray jobs: the token as a mounted file, the worker groups
the autoscaler may add, and what each job driver reserves.
*/}}
{{- define "slmops.rayClientEnv" -}}
{{- if .Values.ray.auth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN_PATH
  value: {{ include "slmops.rayAuthTokenPath" . }}
{{- end }}
{{- if .Values.ray.create }}
- name: SLMOPS_RAY_WORKER_GROUPS
  value: {{ include "slmops.rayWorkerGroupsJson" . | quote }}
{{- end }}
- name: SLMOPS_JOB_ENTRYPOINT_CPUS
  value: {{ .Values.ray.jobDriver.cpus | toString | quote }}
- name: SLMOPS_JOB_ENTRYPOINT_MEMORY
  value: {{ include "slmops.bytes" .Values.ray.jobDriver.memory | quote }}
{{- end }}

{{- define "slmops.databaseEnv" -}}
{{- if .Values.postgresql.enabled }}
- name: SLMOPS_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "slmops.postgresqlSecret" . }}
      key: password
- name: SLMOPS_DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s:$(SLMOPS_DB_PASSWORD)@%s.%s.svc:5432/%s" .Values.postgresql.auth.username (include "slmops.postgresqlName" .) .Release.Namespace .Values.postgresql.auth.database | quote }}
{{- else if .Values.database.existingSecret }}
- name: SLMOPS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- else if .Values.database.url }}
- name: SLMOPS_DATABASE_URL
  value: {{ .Values.database.url | quote }}
{{- end }}
{{- end }}

{{/* envFrom of the services: the object store's credentials. */}}
{{- define "slmops.artifactEnvFrom" -}}
{{- with .Values.artifacts.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end }}

{{/* Volume and mount of the Ray token in the services (RAY_AUTH_TOKEN_PATH). */}}
{{- define "slmops.rayAuthVolumeMounts" -}}
{{- if .Values.ray.auth.enabled }}
- name: ray-auth
  mountPath: {{ dir (include "slmops.rayAuthTokenPath" .) }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "slmops.rayAuthVolumes" -}}
{{- if .Values.ray.auth.enabled }}
- name: ray-auth
  secret:
    secretName: {{ include "slmops.rayAuthSecret" . }}
    defaultMode: 0440
    items:
      - key: {{ include "slmops.rayAuthSecretKey" . }}
        path: {{ base (include "slmops.rayAuthTokenPath" .) }}
{{- end }}
{{- end }}
