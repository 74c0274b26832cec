{{/* Common labels. */}}
{{- define "genesis-mesh.labels" -}}
app.kubernetes.io/name: genesis-mesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "genesis-mesh.selector" -}}
app.kubernetes.io/name: genesis-mesh
app.kubernetes.io/component: operator
{{- end }}

{{- define "genesis-mesh.image" -}}
{{- printf "%s:%s" .repository (default $.appVersion .tag) -}}
{{- end }}

{{- define "genesis-mesh.serviceAccount" -}}
{{- if .Values.serviceAccount.create }}{{ .Values.serviceAccount.name }}{{ else }}{{ default "default" .Values.serviceAccount.name }}{{ end -}}
{{- end }}
