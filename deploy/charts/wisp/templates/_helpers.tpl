{{/* The one image every component runs. */}}
{{- define "wisp.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* Labels of every object of component `.component` (call with dict "root" $ "component" "x"). */}}
{{- define "wisp.labels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/part-of: wisp
{{- end }}

{{/* Where ztunnels and clients reach the control plane: the operator's Service. */}}
{{- define "wisp.controlPlane" -}}
wisp-operator.{{ .Values.namespace }}.svc:15012
{{- end }}
