{{/* Name of the operator's RBAC objects. */}}
{{- define "kubesky.operatorName" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of the operator's pods (the NetworkPolicy admits exactly these). */}}
{{- define "kubesky.operatorSelector" -}}
app.kubernetes.io/name: kubesky-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Namespaces the operator watches, as a JSON list: empty when cluster-wide (clusterWide), else
values.namespaces, else the release namespace alone. */}}
{{- define "kubesky.watchedNamespaces" -}}
{{- if .Values.clusterWide }}
{{- if .Values.namespaces }}
{{- fail (printf "clusterWide: true watches every namespace: leave namespaces empty (it lists %s)" (join ", " .Values.namespaces)) }}
{{- end }}
{{- list | toJson }}
{{- else if .Values.namespaces }}
{{- .Values.namespaces | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end -}}

{{/* Namespaces where beamline workers run, as a JSON list: the watched namespaces (or the release
namespace when cluster-wide), those of chart-declared beamlines, networkPolicy.extraNamespaces. */}}
{{- define "kubesky.workerNamespaces" -}}
{{- $namespaces := include "kubesky.watchedNamespaces" . | fromJsonArray }}
{{- if not $namespaces }}{{ $namespaces = list .Release.Namespace }}{{ end }}
{{- range .Values.beamlines }}{{ $namespaces = append $namespaces (.namespace | default $.Release.Namespace) }}{{ end }}
{{- $namespaces = concat $namespaces (.Values.networkPolicy.extraNamespaces | default list) }}
{{- $namespaces | uniq | toJson }}
{{- end -}}

{{/* The operator's user name, as the apiserver sees its ServiceAccount token. */}}
{{- define "kubesky.operatorUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ .Values.operator.serviceAccount.name }}
{{- end -}}

{{/* Common labels. */}}
{{- define "kubesky.labels" -}}
app.kubernetes.io/name: kubesky
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The operator's namespaced permissions: exactly the calls it makes (kubeapi.KubeApi and kopf),
each rule saying which. Server-side apply is a PATCH that creates an absent object, which the
apiserver authorizes as create too; nothing is ever PUT (update). The operator creates worker
Roles, so it holds what they grant (get/list/watch planruns, get/patch planruns/status): the RBAC
escalation check refuses a Role granting more than its creator holds. */}}
{{- define "kubesky.operatorNamespacedRules" -}}
# kopf watches PlanRuns and Beamlines and patches them (its finalizer, its progress annotations);
# the operator patches a PlanRun's spec.state/priority back and its status. get: worker Roles
# (a worker reads its PlanRuns and its own Beamline, and reserves scan numbers in its status).
- apiGroups: ["kubesky.io"]
  resources: ["planruns"]
  verbs: ["get", "list", "watch", "patch"]
# delete: retention of finished PlanRuns (TTL, history limits); an admission policy allows it only
# on a finished PlanRun not labelled kubesky.io/keep=true.
- apiGroups: ["kubesky.io"]
  resources: ["planruns"]
  verbs: ["delete"]
- apiGroups: ["kubesky.io"]
  resources: ["beamlines"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kubesky.io"]
  resources: ["planruns/status"]
  verbs: ["get", "patch"]
- apiGroups: ["kubesky.io"]
  resources: ["beamlines/status"]
  verbs: ["patch"]
# Worker objects carry an ownerReference to their Beamline with blockOwnerDeletion, which the
# OwnerReferencesPermissionEnforcement admission plugin (where enabled) allows only to who may
# update the owner's finalizers.
- apiGroups: ["kubesky.io"]
  resources: ["beamlines/finalizers"]
  verbs: ["update"]
# list: once at start, its own Events, to post those of transitions made while it was away.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
# Secrets: GET by name only (a referenced Secret's metadata, to check its opt-in label; the token
# of the worker it dispatches to), never list or watch; create a worker's token and TLS Secrets,
# patch only its TLS Secret (a reissued certificate: the admission policy <release>-operator-secrets
# admits patches of kubesky's own Secrets only); never delete one (garbage collection removes them
# with the Beamline).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# A data volume's claim: GET by name, to check its opt-in label.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
# Worker objects, server-side applied.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch"]
# list/watch: plan rollout follows the plans ConfigMaps Beamlines reference.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
# delete: when a Beamline switches to an external endpoint (or drops spec.tiled: its writer).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
# Plan rollout: nudge worker pods so the kubelet re-projects the plans volume at once. The
# admission policy <release>-operator-pods lets this patch change nothing but the annotation
# kubesky.io/plan-set-hash of a kubesky worker's pod.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]
{{- end -}}

{{/* The admission webhook's Service and ValidatingWebhookConfiguration names. */}}
{{- define "kubesky.webhookName" -}}
{{- printf "%s-webhook" (include "kubesky.operatorName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
