{{/* Names, labels and the per-stage values every template shares. */}}

{{- define "auditflow.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-auditflow, or just <release> when the release name already says auditflow. */}}
{{- define "auditflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "auditflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "auditflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: auditflow
{{- end -}}

{{- define "auditflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "auditflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "auditflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* ---- per stage: called with (dict "root" $ "name" $name "stage" $stage) ---- */}}

{{- define "auditflow.stage.fullname" -}}
{{- printf "%s-%s" (include "auditflow.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "auditflow.stage.labels" -}}
{{ include "auditflow.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "auditflow.stage.selectorLabels" -}}
{{ include "auditflow.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "auditflow.stage.binary" -}}
{{- .stage.binary | default (printf "audit-%s" .name) -}}
{{- end -}}

{{/* The consumer group: AUDITFLOW_GROUP_ID if the stage sets it, else the binaries' default. */}}
{{- define "auditflow.stage.group" -}}
{{- $env := .stage.env | default dict -}}
{{- $env.AUDITFLOW_GROUP_ID | default (printf "auditflow-%s" .name) -}}
{{- end -}}

{{- define "auditflow.stage.enabled" -}}
{{- if or (not (hasKey .stage "enabled")) .stage.enabled -}}true{{- end -}}
{{- end -}}

{{- define "auditflow.stage.autoscaling" -}}
{{- $a := .stage.autoscaling | default dict -}}
{{- if or (not (hasKey $a "enabled")) $a.enabled -}}true{{- end -}}
{{- end -}}

{{/*
Upper bound of a stage's instances: its autoscaling.maxReplicas, clamped to the partition count
of its input topic. A consumer group gives each partition to one member; members beyond the
partition count get nothing and sit idle, so scaling past it adds cost, not throughput.
*/}}
{{- define "auditflow.stage.maxReplicas" -}}
{{- $a := .stage.autoscaling | default dict -}}
{{- min (int ($a.maxReplicas | default .stage.partitions)) (int .stage.partitions) -}}
{{- end -}}

{{- define "auditflow.stage.minReplicas" -}}
{{- $a := .stage.autoscaling | default dict -}}
{{- min (int ($a.minReplicas | default 1)) (int (include "auditflow.stage.maxReplicas" .)) -}}
{{- end -}}

{{- define "auditflow.stage.grace" -}}
{{- .stage.terminationGracePeriodSeconds | default .root.Values.terminationGracePeriodSeconds | int -}}
{{- end -}}

{{/* Refuse values that would break a stage at run time, naming the setting. */}}
{{- define "auditflow.stage.validate" -}}
{{- if not .stage.inputTopic -}}
{{- fail (printf "stages.%s.inputTopic is required" .name) -}}
{{- end -}}
{{- if lt (int (.stage.partitions | default 0)) 1 -}}
{{- fail (printf "stages.%s.partitions must be the partition count of %s (at least 1)" .name .stage.inputTopic) -}}
{{- end -}}
{{- range $key, $topic := pick .root.Values.topics "raw" "enriched" "dlq" "ruleMatches" -}}
{{- if and (eq $topic.name $.stage.inputTopic) (ne (int $topic.partitions) (int $.stage.partitions)) -}}
{{- fail (printf "stages.%s.partitions (%d) differs from topics.%s.partitions (%d) of its input topic %s" $.name (int $.stage.partitions) $key (int $topic.partitions) $topic.name) -}}
{{- end -}}
{{- end -}}
{{- $drainMs := add (int .root.Values.config.stage.batchMaxWaitMs) (int .root.Values.config.stage.transactionTimeoutMs) -}}
{{- $grace := int (include "auditflow.stage.grace" .) -}}
{{- if le (mul $grace 1000) $drainMs -}}
{{- fail (printf "stages.%s: terminationGracePeriodSeconds (%d) must exceed the drain time, config.stage.batchMaxWaitMs + transactionTimeoutMs (%d ms)" .name $grace $drainMs) -}}
{{- end -}}
{{- if hasKey .stage "mountSecrets" -}}
{{- fail (printf "stages.%s.mountSecrets: no longer supported; list secrets.env entries in secretEnv" .name) -}}
{{- end -}}
{{- range .stage.secretEnv | default list -}}
{{- if not (hasKey ($.root.Values.secrets.env | default dict) .) -}}
{{- fail (printf "stages.%s.secretEnv: %q is not an entry of secrets.env" $.name .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Refuse API values that would stop audit-api at start or cut requests short. Context: {root, name, stage}. */}}
{{- define "auditflow.api.validate" -}}
{{- if hasKey (.root.Values.stages | default dict) .name -}}
{{- fail (printf "stages.%s: the name is taken by the API (api:); rename the stage" .name) -}}
{{- end -}}
{{- range .stage.secretEnv | default list -}}
{{- if not (hasKey ($.root.Values.secrets.env | default dict) .) -}}
{{- fail (printf "api.secretEnv: %q is not an entry of secrets.env" .) -}}
{{- end -}}
{{- end -}}
{{- $jwks := .stage.jwks | default dict -}}
{{- if and $jwks.configMap $jwks.secret -}}
{{- fail "api.jwks: set configMap or secret, not both" -}}
{{- end -}}
{{- if and $jwks.url (or $jwks.configMap $jwks.secret) -}}
{{- fail "api.jwks: set url or a configMap/secret, not both" -}}
{{- end -}}
{{- $hs256 := false -}}
{{- range .stage.secretEnv | default list -}}
{{- if eq (index $.root.Values.secrets.env .).env "AUDITFLOW_JWT_SECRET" -}}
{{- $hs256 = true -}}
{{- end -}}
{{- end -}}
{{- if not (or $hs256 $jwks.configMap $jwks.secret $jwks.url) -}}
{{- fail "api: no way to verify tokens (audit-api would refuse to start): list jwtSecret in api.secretEnv, or set api.jwks.url, api.jwks.configMap or api.jwks.secret" -}}
{{- end -}}
{{- $drain := add (int (.stage.preStopSleepSeconds | default 0)) (int (.stage.requestTimeoutSecs | default 30)) -}}
{{- $grace := int (include "auditflow.stage.grace" .) -}}
{{- if le $grace $drain -}}
{{- fail (printf "api: terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + requestTimeoutSecs (%d s), or requests in flight are cut off" $grace $drain) -}}
{{- end -}}
{{- $as := .stage.autoscaling | default dict -}}
{{- if and $as.enabled (gt (int ($as.minReplicas | default 1)) (int ($as.maxReplicas | default 1))) -}}
{{- fail (printf "api.autoscaling: minReplicas (%d) exceeds maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- end -}}
{{- end -}}

{{/* Pod- and container-level hardening shared by stages and jobs. */}}
{{- define "auditflow.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "auditflow.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/* AUDITFLOW_DATABASE_URL from its Secret: for containers that talk to PostgreSQL. */}}
{{- define "auditflow.env.database" -}}
- name: AUDITFLOW_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "secrets.database.existingSecret is required" .Values.secrets.database.existingSecret }}
      key: {{ .Values.secrets.database.key }}
{{- end -}}

{{/* A stage's database URL: its own login's Secret when set, else secrets.database. Context: {root, stage}. */}}
{{- define "auditflow.env.stageDatabase" -}}
{{- $own := .stage.databaseSecret | default dict -}}
{{- if $own.existingSecret -}}
- name: AUDITFLOW_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $own.existingSecret }}
      key: {{ $own.key | default "url" }}
{{- else -}}
{{- include "auditflow.env.database" .root -}}
{{- end -}}
{{- end -}}

{{/* The stage's secretEnv entries as secretKeyRef variables. Context: {root, stage}. */}}
{{- define "auditflow.env.secrets" -}}
{{- range .stage.secretEnv | default list }}
{{- $s := index $.root.Values.secrets.env . }}
- name: {{ required (printf "secrets.env.%s.env is required" .) $s.env }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "secrets.env.%s.existingSecret is required" .) $s.existingSecret }}
      key: {{ required (printf "secrets.env.%s.key is required" .) $s.key }}
{{- end }}
{{- end -}}

{{/* Kafka SASL credentials from their Secret (when kafka.sasl.enabled): for Kafka clients. */}}
{{- define "auditflow.env.kafka" -}}
{{- if .Values.kafka.sasl.enabled -}}
- name: AUDITFLOW_LIBRDKAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "secrets.kafkaSasl.existingSecret is required with kafka.sasl.enabled" .Values.secrets.kafkaSasl.existingSecret }}
      key: {{ .Values.secrets.kafkaSasl.usernameKey }}
- name: AUDITFLOW_LIBRDKAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.kafkaSasl.existingSecret }}
      key: {{ .Values.secrets.kafkaSasl.passwordKey }}
{{- end -}}
{{- end -}}

{{/* The retention CronJob: the schema owner's database URL and the OpenSearch user. */}}
{{- define "auditflow.env.retention" -}}
{{- include "auditflow.env.database" . }}
{{- include "auditflow.env.secrets" (dict "root" . "stage" (dict "secretEnv" (list "opensearchUsername" "opensearchPassword"))) }}
{{- end -}}
