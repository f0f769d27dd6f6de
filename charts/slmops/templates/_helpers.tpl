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

{{- define "slmops.rayAuthSecret" -}}
{{- default (printf "%s-ray-auth" (include "slmops.fullname" .)) .Values.ray.auth.existingSecret }}
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

{{- define "slmops.postgresqlName" -}}
{{- printf "%s-postgresql" (include "slmops.fullname" .) }}
{{- end }}

{{- define "slmops.postgresqlSecret" -}}
{{- default (include "slmops.postgresqlName" .) .Values.postgresql.auth.existingSecret }}
{{- end }}

{{/* A random secret value that survives upgrades: (dict "root" $ "name" secretName "key" key) */}}
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
{{- if and (not .Values.ray.create) .Values.ray.address .Values.ray.auth.enabled (not .Values.ray.auth.existingSecret) }}
{{- fail "ray.auth.enabled with an existing Ray cluster needs ray.auth.existingSecret (a Secret with that cluster's token under key `token`), or ray.auth.enabled=false for a cluster without token auth" }}
{{- end }}
{{- if and .Values.grpcAuth.tls.requireClientCert (not .Values.grpcAuth.tls.existingSecret) }}
{{- fail "grpcAuth.tls.requireClientCert needs grpcAuth.tls.existingSecret: a kubernetes.io/tls Secret whose ca.crt signs the client certificates" }}
{{- end }}
{{- if not (has .Values.serving.backend (list "kserve" "local")) }}
{{- fail (printf "serving.backend must be kserve or local, not %q" .Values.serving.backend) }}
{{- end }}
{{- end }}

{{/*
Environment shared by service pods and Ray pods: artifacts, tracing, Ray auth.
*/}}
{{- define "slmops.sharedEnv" -}}
- name: SLMOPS_DATA_DIR
  value: /var/lib/slmops
{{- with include "slmops.artifactRoot" . }}
- name: SLMOPS_ARTIFACT_ROOT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.artifacts.endpoint }}
- name: AWS_ENDPOINT_URL
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
{{- if .Values.ray.auth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "slmops.rayAuthSecret" . }}
      key: token
{{- end }}
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

{{- define "slmops.artifactEnvFrom" -}}
{{- with .Values.artifacts.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end }}
