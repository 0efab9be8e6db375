{{/*
meterline.validate fails the rendering, with a message naming the value to
change, on values that would deploy something broken or unsafe. The types of
the values are checked by values.schema.json before this runs.
*/}}
{{- define "meterline.validate" -}}
{{- $v := .Values -}}
{{- if not $v.kafka.brokers -}}
{{- fail "kafka.brokers is required: the bootstrap addresses (host:port) of your Kafka brokers, e.g. --set 'kafka.brokers={kafka-0.kafka:9092,kafka-1.kafka:9092}'" -}}
{{- end -}}
{{- range $v.kafka.brokers -}}
{{- if not (regexMatch "^[^\\s:/,]+:[0-9]{1,5}$|^\\[[0-9a-fA-F:.]+\\]:[0-9]{1,5}$" .) -}}
{{- fail (printf "kafka.brokers: %q is not host:port" .) -}}
{{- end -}}
{{- end -}}
{{- if not $v.clickhouse.addr -}}
{{- fail "clickhouse.addr is required: the native-protocol addresses (host:port, usually 9000 or 9440 with TLS) of your ClickHouse server; the chart does not run the embedded engine" -}}
{{- end -}}
{{- range $v.clickhouse.addr -}}
{{- if not (regexMatch "^[^\\s:/,]+:[0-9]{1,5}$|^\\[[0-9a-fA-F:.]+\\]:[0-9]{1,5}$" .) -}}
{{- fail (printf "clickhouse.addr: %q is not host:port" .) -}}
{{- end -}}
{{- end -}}
{{- if and $v.kafka.sasl.mechanism (not $v.kafka.sasl.username) -}}
{{- fail (printf "kafka.sasl.username is required with kafka.sasl.mechanism %q" $v.kafka.sasl.mechanism) -}}
{{- end -}}
{{- $kp := $v.kafka.sasl.password | default dict -}}
{{- if and $v.kafka.sasl.mechanism (not (or $kp.value ($kp.secretRef | default dict).name)) -}}
{{- fail (printf "kafka.sasl.password is required with kafka.sasl.mechanism %q: set kafka.sasl.password.value or kafka.sasl.password.secretRef" $v.kafka.sasl.mechanism) -}}
{{- end -}}
{{- if $v.http.tls.enabled -}}
{{- range list "cert" "key" -}}
{{- $s := index $v.http.tls . | default dict -}}
{{- if not (or $s.value ($s.secretRef | default dict).name) -}}
{{- fail (printf "http.tls.%s is required with http.tls.enabled: its value (PEM) or secretRef" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $role := include "meterline.singletonRoles" . | fromJsonArray -}}
{{- $r := index $v $role -}}
{{- if and $r.enabled (gt (int $r.replicas) 1) -}}
{{- fail (printf "%s.replicas is %d: the %s role has no lease today, so two replicas would both run it (%s); set %s.replicas to 1 (the Deployment uses the Recreate strategy, so an upgrade never runs two)" $role (int $r.replicas) $role (ternary "roll up the same windows" "report to Stripe" (eq $role "aggregator")) $role) -}}
{{- end -}}
{{- end -}}
{{- if and $v.sink.enabled (gt (int $v.sink.replicas) (int $v.kafka.partitions)) -}}
{{- fail (printf "sink.replicas is %d but kafka.partitions is %d: a consumer group gives each partition to one sink, so the sinks past the partition count would idle; set sink.replicas to at most %d or raise kafka.partitions" (int $v.sink.replicas) (int $v.kafka.partitions) (int $v.kafka.partitions)) -}}
{{- end -}}
{{- $as := $v.collector.autoscaling -}}
{{- if and $v.collector.enabled $as.enabled -}}
{{- if gt (int $as.minReplicas) (int $as.maxReplicas) -}}
{{- fail (printf "collector.autoscaling.minReplicas (%d) is above maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- end -}}
{{- if not (($v.collector.resources | default dict).requests | default dict).cpu -}}
{{- fail "collector.autoscaling needs collector.resources.requests.cpu: the autoscaler scales on CPU use relative to the request" -}}
{{- end -}}
{{- end -}}
{{- $sender := dig "limits" "alert_sender" "lease" ($v.config | default dict) -}}
{{- if and $v.query.enabled (gt (int $v.query.replicas) 1) (eq $sender "always") -}}
{{- fail (printf "config.limits.alert_sender is \"always\" with query.replicas %d: every query replica would send every usage alert; use \"lease\" (the default) to elect one sender" (int $v.query.replicas)) -}}
{{- end -}}
{{- if $v.billing.enabled -}}
{{- if not $v.billing.mapping -}}
{{- fail "billing.mapping is required with billing.enabled: the customers' and plans' Stripe mapping (docs/billing.md)" -}}
{{- end -}}
{{- $k := $v.billing.stripeApiKey | default dict -}}
{{- if not (or $k.value ($k.secretRef | default dict).name) -}}
{{- fail "billing.stripeApiKey is required with billing.enabled: set billing.stripeApiKey.secretRef (a Secret of yours) or billing.stripeApiKey.value" -}}
{{- end -}}
{{- end -}}
{{- /* Settings the chart manages, and secrets, never come through config. */ -}}
{{- $managed := dict
  "http.addr" "http.port" "http.tls" "http.tls"
  "kafka.brokers" "kafka.brokers" "kafka.topic" "kafka.topic" "kafka.dead_letter_topic" "kafka.deadLetterTopic"
  "kafka.partitions" "kafka.partitions" "kafka.replication_factor" "kafka.replicationFactor" "kafka.create_topics" "kafka.createTopics"
  "kafka.tls" "kafka.tls" "kafka.sasl" "kafka.sasl"
  "clickhouse.addr" "clickhouse.addr" "clickhouse.database" "clickhouse.database" "clickhouse.username" "clickhouse.username"
  "clickhouse.password" "clickhouse.password" "clickhouse.password_file" "clickhouse.password" "clickhouse.tls" "clickhouse.tls"
  "clickhouse.data_dir" "clickhouse.addr (the chart runs the server engine)" "clickhouse.encryption" "a ClickHouse server's encrypted disk (clickhouse.storage_policy in config)"
  "auth.tokens" "auth.tokens" "auth.tokens_file" "auth.tokens or auth.tokensSecretRef"
  "limits.catalogue_file" "catalogue" "limits.webhook_secret" "limits.webhookSecret" "limits.webhook_secret_file" "limits.webhookSecret"
  "privacy.ip_hash_secret" "privacy.ipHashSecret" "privacy.ip_hash_secret_file" "privacy.ipHashSecret"
  "billing.mapping_file" "billing.mapping" "billing.stripe_api_key" "billing.stripeApiKey" "billing.stripe_api_key_file" "billing.stripeApiKey"
  "billing.webhook_secret" "billing.webhookSecret" "billing.webhook_secret_file" "billing.webhookSecret"
-}}
{{- range $path := keys $managed | sortAlpha -}}
{{- $cur := $v.config | default dict -}}
{{- $found := true -}}
{{- range $k := splitList "." $path -}}
{{- if and $found (kindIs "map" $cur) (hasKey $cur $k) -}}{{- $cur = index $cur $k -}}{{- else -}}{{- $found = false -}}{{- end -}}
{{- end -}}
{{- if $found -}}
{{- fail (printf "config.%s is set by the chart: set %s instead%s" $path (index $managed $path) (ternary " (secrets go to the chart's Secret or a Secret of yours, never to the ConfigMap)" "" (regexMatch "password|secret|api_key|tokens" $path))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
