{{/*
The API key the predictors require (`Authorization: Bearer`). The chart makes
<fullname>-predictor-key (key `api-key`, random, kept across upgrades) unless
serving.kserve.runtime.apiKeySecret names an existing Secret. The predictor
runtimes mount it and run the predictor with --api-key-file; the services that
call deployments (serving, synthesis, evaluation) and the Ray pods, whose jobs
call them too, mount it and read it through SLMOPS_PREDICTOR_API_KEY_FILE.
*/}}

{{- define "slmops.predictorKeySecret" -}}
{{- .Values.serving.kserve.runtime.apiKeySecret | default (printf "%s-predictor-key" (include "slmops.fullname" .)) }}
{{- end }}

{{- define "slmops.predictorKeyDir" -}}
/var/run/secrets/slmops-predictor
{{- end }}

{{/* Whether a service container gets the key: (dict "root" $ "service" name) -> "true" or "". */}}
{{- define "slmops.predictorKeyWanted" -}}
{{- if has .service (list "serving" "synthesis" "evaluation") }}true{{ end }}
{{- end }}

{{/* SLMOPS_PREDICTOR_API_KEY_FILE (root context). */}}
{{- define "slmops.predictorKeyEnv" -}}
- name: SLMOPS_PREDICTOR_API_KEY_FILE
  value: {{ printf "%s/api-key" (include "slmops.predictorKeyDir" .) | quote }}
{{- end }}

{{- define "slmops.predictorKeyVolumeMount" -}}
- name: predictor-key
  mountPath: {{ include "slmops.predictorKeyDir" . }}
  readOnly: true
{{- end }}

{{- define "slmops.predictorKeyVolume" -}}
- name: predictor-key
  secret:
    secretName: {{ include "slmops.predictorKeySecret" . }}
    items:
      - key: api-key
        path: api-key
{{- end }}
