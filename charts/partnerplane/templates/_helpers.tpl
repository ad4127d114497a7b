{{/* Chart name. */}}
{{- define "partnerplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-operator`: `helm install partnerplane` names objects as config/default does. */}}
{{- define "partnerplane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "partnerplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "partnerplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "partnerplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "partnerplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: partnerplane
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "partnerplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "partnerplane.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "partnerplane.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Where the configuration file is mounted; `--config` names it. */}}
{{- define "partnerplane.configDir" -}}/etc/partnerplane{{- end -}}
{{- define "partnerplane.configPath" -}}{{ include "partnerplane.configDir" . }}/operator.yaml{{- end -}}

{{/* A Secret key reference with the release namespace as its default namespace. */}}
{{- define "partnerplane.secretRef" -}}
{{- $ref := .ref -}}
{{- dict "namespace" (default .namespace $ref.namespace) "name" $ref.name "key" $ref.key | toJson -}}
{{- end -}}

{{/*
The operator's configuration file. Secret references default to the release
namespace; everything else is passed through as written (the schema refuses
unknown keys, as the operator does).
*/}}
{{- define "partnerplane.configFile" -}}
{{- $ns := .Release.Namespace -}}
{{- $c := deepCopy .Values.config -}}
{{- $postgres := list -}}
{{- range $backend := $c.postgres -}}
{{- $b := deepCopy $backend -}}
{{- $_ := set $b "dsnSecret" (include "partnerplane.secretRef" (dict "ref" $backend.dsnSecret "namespace" $ns) | fromJson) -}}
{{- if $backend.caSecret -}}
{{- $_ := set $b "caSecret" (include "partnerplane.secretRef" (dict "ref" $backend.caSecret "namespace" $ns) | fromJson) -}}
{{- end -}}
{{- $postgres = append $postgres $b -}}
{{- end -}}
{{- $_ := set $c "postgres" $postgres -}}
{{- $_ := set $c.redis "urlSecret" (include "partnerplane.secretRef" (dict "ref" $c.redis.urlSecret "namespace" $ns) | fromJson) -}}
{{- if $c.redis.caSecret -}}
{{- $_ := set $c.redis "caSecret" (include "partnerplane.secretRef" (dict "ref" $c.redis.caSecret "namespace" $ns) | fromJson) -}}
{{- end -}}
{{- $_ := set $c.vault "tokenSecret" (include "partnerplane.secretRef" (dict "ref" $c.vault.tokenSecret "namespace" $ns) | fromJson) -}}
{{- if $c.vault.caSecret -}}
{{- $_ := set $c.vault "caSecret" (include "partnerplane.secretRef" (dict "ref" $c.vault.caSecret "namespace" $ns) | fromJson) -}}
{{- end -}}
{{- if and $c.webhooks $c.webhooks.caSecret -}}
{{- $_ := set $c.webhooks "caSecret" (include "partnerplane.secretRef" (dict "ref" $c.webhooks.caSecret "namespace" $ns) | fromJson) -}}
{{- end -}}
{{- if $c.n8n -}}
{{- $_ := set $c.n8n "apiKeySecret" (include "partnerplane.secretRef" (dict "ref" $c.n8n.apiKeySecret "namespace" $ns) | fromJson) -}}
{{- if $c.n8n.caSecret -}}
{{- $_ := set $c.n8n "caSecret" (include "partnerplane.secretRef" (dict "ref" $c.n8n.caSecret "namespace" $ns) | fromJson) -}}
{{- end -}}
{{- else -}}
{{- $_ := unset $c "n8n" -}}
{{- end -}}
{{- $_ := set $c "tenantSecretsClusterRole" (printf "%s-tenant-secrets" (include "partnerplane.fullname" .)) -}}
{{- toYaml $c -}}
{{- end -}}

{{/* PromQL label matchers selecting this installation's series. */}}
{{- define "partnerplane.alertSelector" -}}
{{- default (printf "job=%q" (printf "%s-metrics" (include "partnerplane.fullname" .))) .Values.prometheusRule.selector -}}
{{- end -}}

{{/* Checks the combinations the schema cannot express clearly. */}}
{{- define "partnerplane.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicas > 1 needs leaderElection.enabled: without it every replica reconciles every tenant" -}}
{{- end -}}
{{- if and (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) -}}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" -}}
{{- end -}}
{{- end -}}
