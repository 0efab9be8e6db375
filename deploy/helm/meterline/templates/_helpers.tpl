{{/* Names, labels and the pieces every role shares. */}}

{{- define "meterline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meterline.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The roles, in the order their objects are rendered. */}}
{{- define "meterline.roles" -}}
["collector", "sink", "query", "aggregator", "billing"]
{{- end -}}

{{/* Roles that no lease protects: at most one replica. */}}
{{- define "meterline.singletonRoles" -}}
["aggregator", "billing"]
{{- end -}}

{{/* Roles that serve requests from outside the release. */}}
{{- define "meterline.apiRoles" -}}
["collector", "query", "billing"]
{{- end -}}

{{- define "meterline.labels" -}}
app.kubernetes.io/name: {{ include "meterline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "meterline.extraLabels" . }}
{{- end -}}

{{/* The labels beside name and instance (pod templates add them to the selector's). */}}
{{- define "meterline.extraLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meterline
{{- end -}}

{{/* selectorLabels: (dict "root" $ "role" "sink") */}}
{{- define "meterline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meterline.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "meterline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "meterline.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "meterline.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Where the files go inside the containers. */}}
{{- define "meterline.configDir" -}}/etc/meterline/config{{- end -}}
{{- define "meterline.secretDir" -}}/etc/meterline/secrets{{- end -}}

{{/*
meterline.secretItems: the secret files the configuration uses, as a JSON
list of {file, path, value, name, key}: value for one stored in the chart's
Secret, name and key for one read from a Secret of the user's. A secret is
used only where its feature is on (TLS enabled, a SASL mechanism, billing).
*/}}
{{- define "meterline.secretItems" -}}
{{- $v := .Values -}}
{{- $tokens := dict "value" "" "secretRef" $v.auth.tokensSecretRef -}}
{{- if $v.auth.tokens -}}{{- $_ := set $tokens "value" (toYaml (dict "tokens" $v.auth.tokens)) -}}{{- end -}}
{{- $items := list
  (dict "file" "kafka-ca.crt" "path" "kafka.tls.ca" "src" $v.kafka.tls.ca "when" $v.kafka.tls.enabled)
  (dict "file" "kafka-client.crt" "path" "kafka.tls.cert" "src" $v.kafka.tls.cert "when" $v.kafka.tls.enabled)
  (dict "file" "kafka-client.key" "path" "kafka.tls.key" "src" $v.kafka.tls.key "when" $v.kafka.tls.enabled)
  (dict "file" "kafka-sasl-password" "path" "kafka.sasl.password" "src" $v.kafka.sasl.password "when" (ne $v.kafka.sasl.mechanism ""))
  (dict "file" "clickhouse-password" "path" "clickhouse.password" "src" $v.clickhouse.password "when" true)
  (dict "file" "clickhouse-ca.crt" "path" "clickhouse.tls.ca" "src" $v.clickhouse.tls.ca "when" $v.clickhouse.tls.enabled)
  (dict "file" "clickhouse-client.crt" "path" "clickhouse.tls.cert" "src" $v.clickhouse.tls.cert "when" $v.clickhouse.tls.enabled)
  (dict "file" "clickhouse-client.key" "path" "clickhouse.tls.key" "src" $v.clickhouse.tls.key "when" $v.clickhouse.tls.enabled)
  (dict "file" "http-tls.crt" "path" "http.tls.cert" "src" $v.http.tls.cert "when" $v.http.tls.enabled)
  (dict "file" "http-tls.key" "path" "http.tls.key" "src" $v.http.tls.key "when" $v.http.tls.enabled)
  (dict "file" "tokens.yaml" "path" "auth.tokens" "src" $tokens "when" true)
  (dict "file" "alert-webhook-secret" "path" "limits.webhookSecret" "src" $v.limits.webhookSecret "when" true)
  (dict "file" "ip-hash-secret" "path" "privacy.ipHashSecret" "src" $v.privacy.ipHashSecret "when" true)
  (dict "file" "stripe-api-key" "path" "billing.stripeApiKey" "src" $v.billing.stripeApiKey "when" $v.billing.enabled)
  (dict "file" "stripe-webhook-secret" "path" "billing.webhookSecret" "src" $v.billing.webhookSecret "when" $v.billing.enabled)
-}}
{{- $out := list -}}
{{- range $items -}}
{{- $src := .src | default dict -}}
{{- $ref := $src.secretRef | default dict -}}
{{- $val := $src.value | default "" -}}
{{- if and .when (or $val $ref.name) -}}
{{- if and $val $ref.name -}}{{- fail (printf "%s: give value or secretRef, not both" .path) -}}{{- end -}}
{{- if and $ref.name (not $ref.key) -}}{{- fail (printf "%s.secretRef.key is required with %s.secretRef.name (the key of the Secret %q that holds it)" .path .path $ref.name) -}}{{- end -}}
{{- $out = append $out (dict "file" .file "path" .path "value" $val "name" ($ref.name | default "") "key" ($ref.key | default "")) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* meterline.secretSet: the files of meterline.secretItems, as a JSON object file → true. */}}
{{- define "meterline.secretSet" -}}
{{- $set := dict -}}
{{- range (include "meterline.secretItems" . | fromJsonArray) -}}{{- $_ := set $set .file true -}}{{- end -}}
{{- toJson $set -}}
{{- end -}}

{{/* meterline.secretPath: (list $ "file") → the mounted path, or "" when the secret is not set. */}}
{{- define "meterline.secretPath" -}}
{{- $root := index . 0 -}}{{- $file := index . 1 -}}
{{- $set := include "meterline.secretSet" $root | fromJson -}}
{{- if hasKey $set $file -}}{{- printf "%s/%s" (include "meterline.secretDir" $root) $file -}}{{- end -}}
{{- end -}}

{{/* The meterline configuration file, from values. */}}
{{- define "meterline.config" -}}
{{- include "meterline.validate" . -}}
{{- $v := .Values -}}
{{- $sp := dict -}}
{{- range (include "meterline.secretItems" . | fromJsonArray) -}}{{- $_ := set $sp .file (printf "%s/%s" (include "meterline.secretDir" $) .file) -}}{{- end -}}
{{- $http := dict "addr" (printf "0.0.0.0:%d" (int $v.http.port)) -}}
{{- if $v.http.tls.enabled -}}
{{- $_ := set $http "tls" (dict "cert_file" (get $sp "http-tls.crt") "key_file" (get $sp "http-tls.key")) -}}
{{- end -}}
{{- $ktls := dict "enabled" $v.kafka.tls.enabled -}}
{{- if $v.kafka.tls.enabled -}}
{{- with get $sp "kafka-ca.crt" }}{{ $_ := set $ktls "ca_file" . }}{{ end -}}
{{- with get $sp "kafka-client.crt" }}{{ $_ := set $ktls "cert_file" . }}{{ end -}}
{{- with get $sp "kafka-client.key" }}{{ $_ := set $ktls "key_file" . }}{{ end -}}
{{- with $v.kafka.tls.serverName }}{{ $_ := set $ktls "server_name" . }}{{ end -}}
{{- if $v.kafka.tls.insecureSkipVerify }}{{ $_ := set $ktls "insecure_skip_verify" true }}{{ end -}}
{{- end -}}
{{- $kafka := dict "brokers" $v.kafka.brokers "topic" $v.kafka.topic "dead_letter_topic" $v.kafka.deadLetterTopic "partitions" (int $v.kafka.partitions) "replication_factor" (int $v.kafka.replicationFactor) "create_topics" $v.kafka.createTopics "tls" $ktls -}}
{{- if $v.kafka.sasl.mechanism -}}
{{- $_ := set $kafka "sasl" (dict "mechanism" $v.kafka.sasl.mechanism "username" $v.kafka.sasl.username "password_file" (get $sp "kafka-sasl-password")) -}}
{{- end -}}
{{- $ctls := dict "enabled" $v.clickhouse.tls.enabled -}}
{{- if $v.clickhouse.tls.enabled -}}
{{- with get $sp "clickhouse-ca.crt" }}{{ $_ := set $ctls "ca_file" . }}{{ end -}}
{{- with get $sp "clickhouse-client.crt" }}{{ $_ := set $ctls "cert_file" . }}{{ end -}}
{{- with get $sp "clickhouse-client.key" }}{{ $_ := set $ctls "key_file" . }}{{ end -}}
{{- with $v.clickhouse.tls.serverName }}{{ $_ := set $ctls "server_name" . }}{{ end -}}
{{- if $v.clickhouse.tls.insecureSkipVerify }}{{ $_ := set $ctls "insecure_skip_verify" true }}{{ end -}}
{{- end -}}
{{- $ch := dict "addr" $v.clickhouse.addr "database" $v.clickhouse.database "username" $v.clickhouse.username "tls" $ctls -}}
{{- with get $sp "clickhouse-password" }}{{ $_ := set $ch "password_file" . }}{{ end -}}
{{- $m := dict "http" $http "kafka" $kafka "clickhouse" $ch -}}
{{- with get $sp "tokens.yaml" }}{{ $_ := set $m "auth" (dict "tokens_file" .) }}{{ end -}}
{{- $limits := dict -}}
{{- if $v.catalogue }}{{ $_ := set $limits "catalogue_file" (printf "%s/catalogue.yaml" (include "meterline.configDir" $)) }}{{ end -}}
{{- with get $sp "alert-webhook-secret" }}{{ $_ := set $limits "webhook_secret_file" . }}{{ end -}}
{{- if $limits }}{{ $_ := set $m "limits" $limits }}{{ end -}}
{{- with get $sp "ip-hash-secret" }}{{ $_ := set $m "privacy" (dict "ip_hash_secret_file" .) }}{{ end -}}
{{- if $v.billing.enabled -}}
{{- $b := dict "mapping_file" (printf "%s/billing-mapping.yaml" (include "meterline.configDir" $)) "stripe_api_key_file" (get $sp "stripe-api-key") -}}
{{- with get $sp "stripe-webhook-secret" }}{{ $_ := set $b "webhook_secret_file" . }}{{ end -}}
{{- $_ := set $m "billing" $b -}}
{{- end -}}
{{- $cfg := mergeOverwrite (deepCopy ($v.config | default dict)) $m -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The data of the ConfigMap: the configuration and the plain files it names. */}}
{{- define "meterline.configMapData" -}}
meterline.yaml: |
{{ include "meterline.config" . | indent 2 }}
{{- if .Values.catalogue }}
catalogue.yaml: |
{{ toYaml .Values.catalogue | indent 2 }}
{{- end }}
{{- if .Values.billing.enabled }}
billing-mapping.yaml: |
{{ toYaml .Values.billing.mapping | indent 2 }}
{{- end }}
{{- end -}}

{{/* The data of the chart's Secret: every secret given as a value. */}}
{{- define "meterline.secretData" -}}
{{- range (include "meterline.secretItems" . | fromJsonArray) }}
{{- if .value }}
{{ .file }}: {{ .value | b64enc | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
meterline.podVolumes: (dict "root" $ "suffix" "" or "-migrate"): the config
directory from the ConfigMap, the secrets directory projected from the
chart's Secret and the user's Secrets, and a writable /tmp.
*/}}
{{- define "meterline.podVolumes" -}}
{{- $root := .root -}}
{{- $name := printf "%s%s" (include "meterline.fullname" $root) .suffix -}}
- name: config
  configMap:
    name: {{ $name }}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ $name }}
{{- range (include "meterline.secretItems" $root | fromJsonArray) }}
{{- if .name }}
      - secret:
          name: {{ .name }}
          items:
            - key: {{ .key }}
              path: {{ .file }}
{{- end }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "meterline.volumeMounts" -}}
- name: config
  mountPath: {{ include "meterline.configDir" . }}
  readOnly: true
- name: secrets
  mountPath: {{ include "meterline.secretDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "meterline.configChecksum" -}}
{{- printf "%s\n%s" (include "meterline.configMapData" .) (include "meterline.secretData" .) | sha256sum -}}
{{- end -}}

{{/* Port of a host:port address (the last colon-separated part). */}}
{{- define "meterline.addrPort" -}}
{{- $parts := splitList ":" . -}}
{{- last $parts -}}
{{- end -}}
