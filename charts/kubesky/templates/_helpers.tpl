{{/* Name of the operator's RBAC objects. */}}
{{- define "kubesky.operatorName" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of the operator's pods (the NetworkPolicy admits exactly these). */}}
{{- define "kubesky.operatorSelector" -}}
app.kubernetes.io/name: kubesky-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Namespaces where beamline workers run, as a JSON list: the watched namespaces (or the release
namespace when all are watched), those of chart-declared beamlines, networkPolicy.extraNamespaces. */}}
{{- define "kubesky.workerNamespaces" -}}
{{- $namespaces := list .Release.Namespace }}
{{- if .Values.namespaces }}{{ $namespaces = .Values.namespaces }}{{ end }}
{{- range .Values.beamlines }}{{ $namespaces = append $namespaces (.namespace | default $.Release.Namespace) }}{{ end }}
{{- $namespaces = concat $namespaces (.Values.networkPolicy.extraNamespaces | default list) }}
{{- $namespaces | uniq | toJson }}
{{- end -}}

{{/* Common labels. */}}
{{- define "kubesky.labels" -}}
app.kubernetes.io/name: kubesky
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The operator's namespaced permissions: its resources, their status and finalizers, Events, and
the objects it owns for in-cluster workers. It creates worker Roles, so it holds what they grant
(get/list/watch planruns, get/patch planruns/status). */}}
{{- define "kubesky.operatorNamespacedRules" -}}
- apiGroups: ["kubesky.io"]
  resources: ["planruns", "beamlines"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["kubesky.io"]
  resources: ["planruns/status", "beamlines/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["kubesky.io"]
  resources: ["planruns/finalizers", "beamlines/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["configmaps", "secrets", "services", "serviceaccounts"]
  verbs: ["get", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]  # plan rollout: watch the plans ConfigMaps Beamlines reference
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["pods"]  # plan rollout: nudge worker pods so the kubelet re-projects the volume now
  verbs: ["list", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "update", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "update", "patch", "delete"]
{{- end -}}
