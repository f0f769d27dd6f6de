{{/*
Who may call the gRPC services (grpcAuth; services/slmops/core/auth.py): the
bearer token and the TLS material, mounted read-only as files under
/var/run/slmops and named by SLMOPS_AUTH_TOKEN_FILE and SLMOPS_TLS_*.
Each helper takes the root context; _grpc_service.tpl includes them.
*/}}
{{- define "slmops.grpcTokenSecret" -}}
{{- default (printf "%s-grpc-auth" (include "slmops.fullname" .)) .Values.grpcAuth.token.existingSecret }}
{{- end }}

{{- define "slmops.grpcAuthEnv" -}}
{{- $auth := .Values.grpcAuth }}
{{- if $auth.token.enabled }}
- name: SLMOPS_AUTH_TOKEN_FILE
  value: /var/run/slmops/auth/token
{{- end }}
{{- if $auth.tls.existingSecret }}
- name: SLMOPS_TLS_CERT_FILE
  value: /var/run/slmops/tls/tls.crt
- name: SLMOPS_TLS_KEY_FILE
  value: /var/run/slmops/tls/tls.key
{{- if $auth.tls.useSecretCA }}
- name: SLMOPS_TLS_CA_FILE
  value: /var/run/slmops/tls/ca.crt
{{- end }}
{{- if $auth.tls.requireClientCert }}
{{- $client := ternary "/var/run/slmops/tls-client" "/var/run/slmops/tls" (not (empty $auth.tls.clientCertSecret)) }}
- name: SLMOPS_TLS_CLIENT_CA_FILE
  value: /var/run/slmops/tls/ca.crt
- name: SLMOPS_TLS_CLIENT_CERT_FILE
  value: {{ $client }}/tls.crt
- name: SLMOPS_TLS_CLIENT_KEY_FILE
  value: {{ $client }}/tls.key
{{- end }}
{{- with $auth.tls.serverName }}
- name: SLMOPS_TLS_SERVER_NAME
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "slmops.grpcAuthVolumeMounts" -}}
{{- $auth := .Values.grpcAuth }}
{{- if $auth.token.enabled }}
- name: grpc-auth
  mountPath: /var/run/slmops/auth
  readOnly: true
{{- end }}
{{- if $auth.tls.existingSecret }}
- name: grpc-tls
  mountPath: /var/run/slmops/tls
  readOnly: true
{{- if and $auth.tls.requireClientCert $auth.tls.clientCertSecret }}
- name: grpc-tls-client
  mountPath: /var/run/slmops/tls-client
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- /* Secret files are readable by the pod's group (fsGroup) only. */}}
{{- define "slmops.grpcAuthVolumes" -}}
{{- $auth := .Values.grpcAuth }}
{{- if $auth.token.enabled }}
- name: grpc-auth
  secret:
    secretName: {{ include "slmops.grpcTokenSecret" . }}
    defaultMode: 0440
    items:
      - key: token
        path: token
{{- end }}
{{- if $auth.tls.existingSecret }}
- name: grpc-tls
  secret:
    secretName: {{ $auth.tls.existingSecret }}
    defaultMode: 0440
{{- if and $auth.tls.requireClientCert $auth.tls.clientCertSecret }}
- name: grpc-tls-client
  secret:
    secretName: {{ $auth.tls.clientCertSecret }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}
{{- end }}

{{/*
How a service's probe asks for its health: (dict "root" $ "service" "training"
"port" 50052 "timeout" 2). The kubelet's grpc probe speaks plain text only, so
with TLS the probe runs slmops.core.health_probe in the container, with the
same credentials the services use on each other, expecting the certificate to
name the service's address (or grpcAuth.tls.serverName) and taking longer for
the interpreter to start. timeout 0 leaves the kubelet's default.
*/}}
{{- define "slmops.grpcProbe" -}}
{{- if .root.Values.grpcAuth.tls.existingSecret }}
exec:
  command:
    - python
    - -m
    - slmops.core.health_probe
    - --port
    - {{ .port | quote }}
    - --server-name
    - {{ include "slmops.serviceHost" (dict "root" .root "service" .service) }}
timeoutSeconds: {{ max (int .timeout) 5 }}
{{- else }}
grpc:
  port: {{ .port }}
{{- if .timeout }}
timeoutSeconds: {{ .timeout }}
{{- end }}
{{- end }}
{{- end }}
