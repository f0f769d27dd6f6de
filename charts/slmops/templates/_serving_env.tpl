{{/*
Serving runtimes, the serving service's KServe settings, and the Prometheus
metrics endpoint every service pod serves.
*/}}

{{/* The CPU predictor runtime the InferenceServices name: one per release, so releases never collide. */}}
{{- define "slmops.predictorRuntimeName" -}}
{{- if .Values.serving.kserve.runtime.create }}
{{- printf "%s-predictor" (include "slmops.fullname" .) }}
{{- else }}
{{- required "serving.kserve.runtime.existingName is required when serving.kserve.runtime.create is false (a ServingRuntime or ClusterServingRuntime installed separately)" .Values.serving.kserve.runtime.existingName }}
{{- end }}
{{- end }}

{{/* The CUDA predictor runtime; empty when GPU serving is off (the serving service then refuses GPU requests). */}}
{{- define "slmops.predictorCudaRuntimeName" -}}
{{- if .Values.serving.kserve.runtime.gpu.enabled }}
{{- printf "%s-predictor-cuda" (include "slmops.fullname" .) }}
{{- end }}
{{- end }}

{{/* Value of the slmops.io/owner label the serving service puts on its InferenceServices. */}}
{{- define "slmops.kserveOwner" -}}
{{- include "slmops.fullname" . }}
{{- end }}

{{/* Labels of the predictor pods KServe creates for this release's InferenceServices. */}}
{{- define "slmops.predictorPodSelector" -}}
slmops.io/owner: {{ include "slmops.kserveOwner" . }}
component: predictor
{{- end }}

{{/*
Environment of one service container: (dict "root" $ "service" "serving").
Every service: SLMOPS_METRICS_PORT. The serving service: its KServe settings.
*/}}
{{- define "slmops.servingEnv" -}}
{{- $root := .root }}
{{- if $root.Values.metrics.enabled }}
- name: SLMOPS_METRICS_PORT
  value: {{ $root.Values.metrics.port | quote }}
{{- end }}
{{- if and (eq .service "serving") (eq $root.Values.serving.backend "kserve") }}
- name: SLMOPS_KSERVE_DEPLOYMENT_MODE
  value: {{ $root.Values.serving.kserve.deploymentMode | quote }}
- name: SLMOPS_KSERVE_RUNTIME
  value: {{ include "slmops.predictorRuntimeName" $root | quote }}
- name: SLMOPS_KSERVE_RUNTIME_GPU
  value: {{ include "slmops.predictorCudaRuntimeName" $root | quote }}
- name: SLMOPS_KSERVE_OWNER
  value: {{ include "slmops.kserveOwner" $root | quote }}
- name: SLMOPS_KSERVE_EXPOSE_EXTERNALLY
  value: {{ $root.Values.serving.kserve.exposeExternally | toString | quote }}
{{- end }}
{{- end }}

{{/* The `metrics` container port of a service pod (root context). */}}
{{- define "slmops.metricsContainerPort" -}}
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* The `metrics` port of a service's Service, which the ServiceMonitor scrapes (root context). */}}
{{- define "slmops.metricsServicePort" -}}
{{- if .Values.metrics.enabled }}
- name: metrics
  port: {{ .Values.metrics.port }}
  targetPort: metrics
  protocol: TCP
{{- end }}
{{- end }}
