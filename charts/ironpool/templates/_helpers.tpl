{{/* Names and labels shared by every template. */}}

{{- define "ironpool.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ironpool.operatorName" -}}{{ include "ironpool.fullname" . }}-operator{{- end -}}
{{- define "ironpool.agentName" -}}{{ include "ironpool.fullname" . }}-agent{{- end -}}

{{- define "ironpool.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ironpool.operatorSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "ironpool.agentSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{/* image reference: "ironpool.image" (list $ .Values.operator.image) */}}
{{- define "ironpool.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry $img.repository (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{- define "ironpool.agentTokenSecret" -}}
{{- default (printf "%s-agent-token" (include "ironpool.fullname" .)) .Values.agent.tokenSecret -}}
{{- end -}}

{{/* ClusterRole (all namespaces) or Role (watchNamespace) for the watched objects. */}}
{{- define "ironpool.scopedKind" -}}
{{- if .Values.watchNamespace -}}Role{{- else -}}ClusterRole{{- end -}}
{{- end -}}

{{- define "ironpool.scopedNamespace" -}}
{{- if .Values.watchNamespace }}
  namespace: {{ .Values.watchNamespace }}
{{- end -}}
{{- end -}}

{{- define "ironpool.podSecurityContext" -}}
seccompProfile:
  type: RuntimeDefault
{{- end -}}
