{{/* The release's name for its objects (63 characters at most, as DNS allows). */}}
{{- define "switchboard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Every object's labels; part-of is the job label of the ServiceMonitor (the alerts
     say job="switchboard", as Prometheus's job in Compose is named). */}}
{{- define "switchboard.labels" -}}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/part-of: switchboard
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "switchboard.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The policy linter's findings that do not apply, each with its reason (checkov reads
     these annotations; tests/deploy fails on any finding not excepted here). */}}
{{- define "switchboard.policyExceptions" -}}
checkov.io/skip1: "CKV_K8S_15=the image is pinned by tag or digest, so IfNotPresent runs the same image without asking the registry at every start; image.pullPolicy: Always is a value away"
checkov.io/skip2: "CKV_K8S_43=operators build Switchboard's images themselves and name them by tag; image.digest pins them by digest"
checkov.io/skip3: "CKV_K8S_35=Switchboard reads its settings, the database URL included, from SWITCHBOARD_* variables only (docs/settings.md): there is no file setting to point at a mounted Secret"
{{- end -}}

{{/* A function's values: functionDefaults, then its own entry on top. */}}
{{- define "switchboard.function" -}}
{{- $own := index .Values.functions .name | default dict -}}
{{- toYaml (mergeOverwrite (deepCopy .Values.functionDefaults) (deepCopy $own)) -}}
{{- end -}}

{{/* The public routes, one list for the Ingress and the HTTPRoute: each path of
     monitoring/proxy/Caddyfile to its function. Prefix P stands for Caddy's "P P/*" (a
     prefix by whole path segments), Exact P for "P" alone; tests/deploy checks the two
     files route alike. */}}
{{- define "switchboard.routes" -}}
- {function: chat, type: Prefix, path: /v1/conversations}
- {function: configs, type: Prefix, path: /v1/configs}
- {function: keys, type: Prefix, path: /v1/keys}
- {function: keys, type: Exact, path: /v1/usage}
- {function: upstreams, type: Exact, path: /v1/upstreams}
- {function: openai, type: Prefix, path: /v1/chat/completions}
- {function: openai, type: Exact, path: /v1/completions}
- {function: openai, type: Exact, path: /v1/embeddings}
- {function: openai, type: Prefix, path: /v1/models}
- {function: openai, type: Prefix, path: /v1/responses}
- {function: openai, type: Prefix, path: /openai/v1/chat/completions}
- {function: openai, type: Exact, path: /openai/v1/completions}
- {function: openai, type: Exact, path: /openai/v1/embeddings}
- {function: openai, type: Prefix, path: /openai/v1/models}
- {function: openai, type: Prefix, path: /openai/v1/responses}
- {function: openai, type: Prefix, path: /openai/v1/conversations}
- {function: chat, type: Prefix, path: /schema}
- {function: chat, type: Exact, path: /healthz}
- {function: chat, type: Exact, path: /readyz}
{{- end -}}

{{/* SWITCHBOARD_* for every Switchboard container: the database from its Secret, the
     upstreams, the drain, and any other setting. */}}
{{- define "switchboard.env" -}}
- name: SWITCHBOARD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret: the Secret holding the PostgreSQL URL" .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- if .Values.database.listenUrlKey }}
- name: SWITCHBOARD_DATABASE_LISTEN_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.listenUrlKey }}
{{- end }}
{{- if .Values.redis.existingSecret }}
- name: {{ .Values.redis.env }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.urlKey }}
{{- end }}
- name: SWITCHBOARD_LLM_URLS
  value: {{ required "llm.urls: at least one vLLM server" (join "," .Values.llm.urls) | quote }}
{{- with .Values.llm.embeddingUrls }}
- name: SWITCHBOARD_EMBEDDING_URLS
  value: {{ join "," . | quote }}
{{- end }}
{{- if .Values.llm.apiKeySecret }}
- name: SWITCHBOARD_LLM_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.llm.apiKeySecret }}
      key: {{ .Values.llm.apiKeySecretKey }}
{{- end }}
- name: SWITCHBOARD_LOG_FORMAT
  value: json
- name: SWITCHBOARD_SHUTDOWN_GRACE_S
  value: {{ .Values.shutdown.graceSeconds | quote }}
- name: SWITCHBOARD_OUTCOME_RETRY_S
  value: {{ .Values.shutdown.outcomeRetrySeconds | quote }}
- name: SWITCHBOARD_OUTCOME_JOURNAL_DIR
  value: /var/lib/switchboard/outcomes
{{- range $name, $value := .Values.settings }}
- name: SWITCHBOARD_{{ $name | upper }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Prefect's side of the flows' containers. */}}
{{- define "switchboard.prefectEnv" -}}
- name: PREFECT_API_URL
  value: {{ required "flows.prefectApiUrl: the Prefect API the flows report to" .Values.flows.prefectApiUrl | quote }}
{{- if .Values.flows.prefectApiKeySecret }}
- name: PREFECT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.flows.prefectApiKeySecret }}
      key: {{ .Values.flows.prefectApiKeySecretKey }}
{{- end }}
- name: PREFECT_HOME
  value: /tmp/prefect
- name: PREFECT_SERVER_ANALYTICS_ENABLED
  value: "false"
- name: DO_NOT_TRACK
  value: "1"
{{- with .Values.flows.pushgatewayUrl }}
- name: SWITCHBOARD_METRICS_PUSHGATEWAY_URL
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The seconds a pod may take to stop: the preStop pause, the drain, the outcome
     retries, and serve's margin (functions/serve.py SHUTDOWN_MARGIN_S = 5). */}}
{{- define "switchboard.terminationGrace" -}}
{{- add .Values.shutdown.preStopSleepSeconds .Values.shutdown.graceSeconds .Values.shutdown.outcomeRetrySeconds 5 -}}
{{- end -}}
