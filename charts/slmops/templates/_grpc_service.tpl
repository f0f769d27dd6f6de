{{/*
One slmops gRPC service: Deployment, Service and (with more than one replica)
a PodDisruptionBudget. Called by each <service>.yaml:
  {{ include "slmops.grpcService" (dict "root" $ "service" "synthesis") }}
*/}}
{{- define "slmops.grpcService" -}}
{{- $root := .root }}
{{- $name := .service }}
{{- $svc := index $root.Values.services $name }}
{{- if $svc.enabled }}
{{- include "slmops.validate" $root }}
{{- $ctx := dict "root" $root "component" $name }}
{{- $defaults := $root.Values.serviceDefaults }}
{{- $fullname := printf "%s-%s" (include "slmops.fullname" $root) $name }}
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "slmops.labels" $ctx | nindent 4 }}
spec:
  type: {{ $defaults.serviceType }}
  selector:
    {{- include "slmops.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $svc.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- with include "slmops.metricsServicePort" $root }}
    {{- . | trim | nindent 4 }}
    {{- end }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "slmops.labels" $ctx | nindent 4 }}
spec:
  replicas: {{ $svc.replicas }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "slmops.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "slmops.labels" $ctx | nindent 8 }}
        {{- with $defaults.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $defaults.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- if eq $name "serving" }}
      serviceAccountName: {{ include "slmops.servingServiceAccountName" $root }}
      automountServiceAccountToken: true
      {{- else }}
      serviceAccountName: {{ include "slmops.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- end }}
      {{- with include "slmops.imagePullSecrets" $root }}
      {{- . | trim | nindent 6 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ $name }}
          image: {{ include "slmops.image" (dict "root" $root "component" $name "override" $svc.image) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["python", "-m", "slmops.{{ $name }}"]
          args: ["--host", "0.0.0.0", "--port", "{{ $svc.port }}"]
          ports:
            - name: grpc
              containerPort: {{ $svc.port }}
              protocol: TCP
            {{- with include "slmops.metricsContainerPort" $root }}
            {{- . | trim | nindent 12 }}
            {{- end }}
          env:
            - name: SLMOPS_HOST
              value: 0.0.0.0
            - name: HOME
              value: /tmp
            - name: XDG_CACHE_HOME
              value: /tmp/.cache
            - name: OTEL_SERVICE_NAME
              value: slmops-{{ $name }}
            - name: OTEL_RESOURCE_ATTRIBUTES
              value: {{ printf "service.namespace=slmops,service.version=%s,k8s.namespace.name=%s" $root.Chart.AppVersion $root.Release.Namespace | quote }}
            - name: RAY_ADDRESS
              value: {{ include "slmops.rayAddress" $root | quote }}
            - name: SLMOPS_SERVING_BACKEND
              value: {{ $root.Values.serving.backend | quote }}
            - name: SLMOPS_KSERVE_NAMESPACE
              value: {{ include "slmops.kserveNamespace" $root | quote }}
            {{- with include "slmops.servingEnv" (dict "root" $root "service" $name) }}
            {{- . | trim | nindent 12 }}
            {{- end }}
            {{- with include "slmops.artifactEnv" $root }}
            {{- . | trim | nindent 12 }}
            {{- end }}
            {{- include "slmops.rayClientEnv" $root | trim | nindent 12 }}
            {{- range $other, $o := $root.Values.services }}
            {{- if $o.enabled }}
            - name: SLMOPS_{{ upper $other }}_ADDR
              value: {{ printf "%s:%v" (include "slmops.serviceHost" (dict "root" $root "service" $other)) $o.port | quote }}
            {{- end }}
            {{- end }}
            {{- with include "slmops.databaseEnv" $root }}
            {{- . | trim | nindent 12 }}
            {{- end }}
            {{- include "slmops.sharedEnv" $root | nindent 12 }}
            {{- with include "slmops.grpcAuthEnv" $root }}
            {{- . | trim | nindent 12 }}
            {{- end }}
            {{- if include "slmops.predictorKeyWanted" (dict "service" $name) }}
            {{- include "slmops.predictorKeyEnv" $root | nindent 12 }}
            {{- end }}
            {{- range $key, $value := $svc.env }}
            - name: {{ $key }}
              value: {{ $value | quote }}
            {{- end }}
          {{- with include "slmops.artifactEnvFrom" $root }}
          {{- . | trim | nindent 10 }}
          {{- end }}
          {{- $probe := dict "root" $root "service" $name "port" $svc.port }}
          startupProbe:
            {{- include "slmops.grpcProbe" (merge (dict "timeout" 0) $probe) | nindent 12 }}
            periodSeconds: 5
            failureThreshold: {{ div $defaults.startupTimeoutSeconds 5 }}
          readinessProbe:
            {{- include "slmops.grpcProbe" (merge (dict "timeout" 2) $probe) | nindent 12 }}
            periodSeconds: 10
          livenessProbe:
            {{- include "slmops.grpcProbe" (merge (dict "timeout" 5) $probe) | nindent 12 }}
            periodSeconds: 20
            failureThreshold: 3
          resources:
            {{- toYaml ($svc.resources | default $defaults.resources) | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: data
              mountPath: /var/lib/slmops
            {{- if $root.Values.artifacts.sharedClaim }}
            - name: artifacts
              mountPath: {{ $root.Values.artifacts.sharedMountPath }}
            {{- end }}
            {{- with include "slmops.grpcAuthVolumeMounts" $root }}
            {{- . | trim | nindent 12 }}
            {{- end }}
            {{- with include "slmops.rayAuthVolumeMounts" $root }}
            {{- . | trim | nindent 12 }}
            {{- end }}
            {{- if include "slmops.predictorKeyWanted" (dict "service" $name) }}
            {{- include "slmops.predictorKeyVolumeMount" $root | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {}
        - name: data
          {{- if $root.Values.dataVolume.existingClaim }}
          persistentVolumeClaim:
            claimName: {{ $root.Values.dataVolume.existingClaim }}
          {{- else }}
          emptyDir:
            sizeLimit: {{ $root.Values.dataVolume.sizeLimit }}
          {{- end }}
        {{- if $root.Values.artifacts.sharedClaim }}
        - name: artifacts
          persistentVolumeClaim:
            claimName: {{ $root.Values.artifacts.sharedClaim }}
        {{- end }}
        {{- with include "slmops.grpcAuthVolumes" $root }}
        {{- . | trim | nindent 8 }}
        {{- end }}
        {{- with include "slmops.rayAuthVolumes" $root }}
        {{- . | trim | nindent 8 }}
        {{- end }}
        {{- if include "slmops.predictorKeyWanted" (dict "service" $name) }}
        {{- include "slmops.predictorKeyVolume" $root | nindent 8 }}
        {{- end }}
      {{- with $defaults.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $defaults.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $defaults.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- if gt (int $svc.replicas) 1 }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "slmops.labels" $ctx | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "slmops.selectorLabels" $ctx | nindent 6 }}
{{- end }}
{{- end }}
{{- end }}
