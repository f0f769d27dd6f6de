{{/*
A Ray pod's spec (head or a worker group):
  (dict "root" $ "group" <ray.head or a worker group> "name" "ray-head" "head" true "gpus" 0 "image" {...})
The Ray image runs as user ray (uid 1000, gid 100); Ray writes under /tmp/ray.
fsGroup and the supplemental group 10001 (the services' group) let Ray jobs and
the services write the same shared artifact claim.
KubeRay adds the Ray token (RAY_AUTH_MODE, RAY_AUTH_TOKEN) to the Ray container
itself when spec.authOptions asks for it, so none is set here. The predictor key
is mounted (SLMOPS_PREDICTOR_API_KEY_FILE): jobs call the release's deployments.
*/}}
{{- define "slmops.rayPodSpec" -}}
{{- $root := .root }}
{{- $group := .group }}
{{- with include "slmops.rayServiceAccountName" (dict "root" $root "group" $group "head" .head) }}
serviceAccountName: {{ . }}
{{- end }}
{{- with include "slmops.imagePullSecrets" $root }}
{{ . | trim }}
{{- end }}
{{- /* The autoscaler sidecar on the head talks to the API server with KubeRay's service account. */}}
automountServiceAccountToken: {{ and .head $root.Values.ray.autoscaling.enabled }}
securityContext:
  runAsNonRoot: true
  runAsUser: 1000
  runAsGroup: 100
  fsGroup: 10001
  supplementalGroups: [10001]
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
      {{- include "slmops.predictorKeyEnv" $root | nindent 6 }}
      # Where the release's InferenceServices live: jobs send the predictor key only to their hosts.
      - name: SLMOPS_KSERVE_NAMESPACE
        value: {{ include "slmops.kserveNamespace" $root | quote }}
      {{- with $group.env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- $envFrom := list }}
    {{- with $root.Values.artifacts.credentialsSecret }}
    {{- $envFrom = append $envFrom (dict "secretRef" (dict "name" .)) }}
    {{- end }}
    {{- range $root.Values.ray.secrets }}
    {{- $envFrom = append $envFrom (dict "secretRef" (dict "name" .)) }}
    {{- end }}
    {{- $envFrom = concat $envFrom ($group.envFrom | default list) }}
    {{- with $envFrom }}
    envFrom:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    resources:
      {{- $resources := deepCopy ($group.resources | default dict) }}
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
      {{- include "slmops.predictorKeyVolumeMount" $root | nindent 6 }}
      {{- with $group.volumeMounts }}
      {{- toYaml . | nindent 6 }}
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
  {{- include "slmops.predictorKeyVolume" $root | nindent 2 }}
  {{- with $group.volumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Annotations of a Ray pod template: the job code's version (the image the jobs
run), so a new image changes the template and KubeRay's upgradeStrategy
Recreate replaces the pods. (dict "root" $ "image" <override> "gpus" n)
*/}}
{{- define "slmops.rayPodAnnotations" -}}
slmops.io/job-code: {{ include "slmops.image" (dict "root" .root "component" (ternary "ray-cuda" "ray" (gt (int .gpus) 0)) "override" .image) | sha256sum | trunc 16 | quote }}
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
