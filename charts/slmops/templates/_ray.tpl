{{/*
A Ray pod's spec (head or worker): (dict "root" $ "name" "ray-head" "image" {...}
"resources" {...} "gpus" 0 "nodeSelector" {...} "tolerations" [...] "head" true)
The Ray image runs as user ray (uid 1000, gid 100); Ray writes under /tmp/ray.
*/}}
{{- define "slmops.rayPodSpec" -}}
{{- $root := .root }}
{{- with include "slmops.imagePullSecrets" $root }}
{{ . | trim }}
{{- end }}
{{- /* The autoscaler sidecar on the head talks to the API server with KubeRay's service account. */}}
automountServiceAccountToken: {{ and .head $root.Values.ray.autoscaling.enabled }}
securityContext:
  runAsNonRoot: true
  runAsUser: 1000
  runAsGroup: 100
  fsGroup: 100
  seccompProfile: {type: RuntimeDefault}
containers:
  - name: {{ .name }}
    image: {{ include "slmops.image" (dict "root" $root "component" (ternary "ray-cuda" "ray" (gt (int .gpus) 0)) "override" .image) }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    {{- if .head }}
    ports:
      - name: gcs
        containerPort: 6379
      - name: dashboard
        containerPort: 8265
      - name: client
        containerPort: 10001
      - name: metrics
        containerPort: 8080
    {{- end }}
    env:
      - name: OTEL_SERVICE_NAME
        value: slmops-ray
      # A stopped job gets this long after SIGTERM to keep what it finished (a synthesis job seals it).
      - name: RAY_JOB_STOP_WAIT_TIME_S
        value: "10"
      {{- include "slmops.sharedEnv" $root | nindent 6 }}
    {{- with include "slmops.artifactEnvFrom" $root }}
    {{- . | trim | nindent 4 }}
    {{- end }}
    resources:
      {{- $resources := deepCopy (.resources | default dict) }}
      {{- if gt (int .gpus) 0 }}
      {{- $limits := merge (dict "nvidia.com/gpu" (int .gpus)) ($resources.limits | default dict) }}
      {{- $_ := set $resources "limits" $limits }}
      {{- end }}
      {{- toYaml $resources | nindent 6 }}
    securityContext:
      allowPrivilegeEscalation: false
      runAsNonRoot: true
      runAsUser: 1000
      capabilities: {drop: [ALL]}
    volumeMounts:
      - name: ray-logs
        mountPath: /tmp/ray
      - name: data
        mountPath: /var/lib/slmops
      {{- if $root.Values.artifacts.sharedClaim }}
      - name: artifacts
        mountPath: {{ $root.Values.artifacts.sharedMountPath }}
      {{- end }}
volumes:
  - name: ray-logs
    emptyDir: {}
  - name: data
    emptyDir: {}
  {{- if $root.Values.artifacts.sharedClaim }}
  - name: artifacts
    persistentVolumeClaim:
      claimName: {{ $root.Values.artifacts.sharedClaim }}
  {{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A map with every value quoted (KubeRay's rayStartParams are strings); {} when empty. */}}
{{- define "slmops.stringMap" -}}
{{- if . }}
{{- range $key, $value := . }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- else -}}
{}
{{- end }}
{{- end }}
