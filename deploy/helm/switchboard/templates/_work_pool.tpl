{{/* The Kubernetes work pool's base job template (prefect-kubernetes' default, with the
     chart's image, namespace, settings, security and resources as its defaults): each flow
     run is a Job of this shape. "{{ x }}" strings are Prefect's placeholders, filled from
     the variables below (a deployment or a run may override them). tests/deploy renders
     it through prefect-kubernetes' own job configuration. */}}
{{- define "switchboard.baseJobTemplate" -}}
{{- $v := .Values.flows.workPool -}}
{{- $p := dict "name" "{{ name }}" "env" "{{ env }}" "labels" "{{ labels }}" "annotations" "{{ annotations }}" "namespace" "{{ namespace }}" "command" "{{ command }}" "image" "{{ image }}" "pull" "{{ image_pull_policy }}" "backoff" "{{ backoff_limit }}" "ttl" "{{ finished_job_ttl }}" "cpuRequest" "{{ cpu_request }}" "cpuLimit" "{{ cpu_limit }}" "memoryRequest" "{{ memory_request }}" "memoryLimit" "{{ memory_limit }}" "jobWatch" "{{ job_watch_timeout_seconds }}" "podWatch" "{{ pod_watch_timeout_seconds }}" "stream" "{{ stream_output }}" -}}
job_configuration:
  command: {{ $p.command | quote }}
  env: {{ $p.env | quote }}
  labels: {{ $p.labels | quote }}
  name: {{ $p.name | quote }}
  annotations: {{ $p.annotations | quote }}
  namespace: {{ $p.namespace | quote }}
  job_watch_timeout_seconds: {{ $p.jobWatch | quote }}
  pod_watch_timeout_seconds: {{ $p.podWatch | quote }}
  stream_output: {{ $p.stream | quote }}
  job_manifest:
    apiVersion: batch/v1
    kind: Job
    metadata:
      generateName: {{ printf "%s-" $p.name | quote }}
      namespace: {{ $p.namespace | quote }}
      labels: {{ $p.labels | quote }}
      annotations: {{ $p.annotations | quote }}
    spec:
      backoffLimit: {{ $p.backoff | quote }}
      ttlSecondsAfterFinished: {{ $p.ttl | quote }}
      template:
        metadata:
          labels:
            {{- include "switchboard.labels" . | nindent 12 }}
            app.kubernetes.io/component: flow-run
        spec:
          # Not pod fields: prefect-kubernetes refuses a template without them (its default
          # has them here); the API server drops them, saying so.
          completions: 1
          parallelism: 1
          restartPolicy: Never
          automountServiceAccountToken: false
          enableServiceLinks: false
          {{- with .Values.imagePullSecrets }}
          imagePullSecrets:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml .Values.podSecurityContext | nindent 12 }}
          containers:
            - name: prefect-job
              image: {{ $p.image | quote }}
              imagePullPolicy: {{ $p.pull | quote }}
              args: {{ $p.command | quote }}
              # Written out (not the {{ "{{ env }}" }} placeholder) so the database URL
              # stays a secretKeyRef; the worker adds Prefect's own variables to it.
              env:
                {{- include "switchboard.env" . | nindent 16 }}
                {{- with .Values.flows.pushgatewayUrl }}
                - name: SWITCHBOARD_METRICS_PUSHGATEWAY_URL
                  value: {{ . | quote }}
                {{- end }}
                - name: PREFECT_HOME
                  value: /tmp/prefect
              resources:
                requests:
                  cpu: {{ $p.cpuRequest | quote }}
                  memory: {{ $p.memoryRequest | quote }}
                limits:
                  cpu: {{ $p.cpuLimit | quote }}
                  memory: {{ $p.memoryLimit | quote }}
              securityContext:
                {{- toYaml .Values.securityContext | nindent 16 }}
              volumeMounts:
                - name: tmp
                  mountPath: /tmp
                - name: outcomes
                  mountPath: /var/lib/switchboard/outcomes
          volumes:
            - name: tmp
              emptyDir:
                sizeLimit: 1Gi
            - name: outcomes
              emptyDir:
                sizeLimit: {{ .Values.outcomeJournal.sizeLimit }}
variables:
  type: object
  properties:
    name:
      title: Name
      description: Name given to infrastructure created by a worker.
      anyOf: [{type: string}, {type: "null"}]
      default: null
    env:
      title: Environment Variables
      description: More environment variables for the flow run.
      type: object
      additionalProperties:
        anyOf: [{type: string}, {type: "null"}]
    labels:
      title: Labels
      description: Labels applied to the Job.
      type: object
      additionalProperties: {type: string}
    annotations:
      title: Annotations
      description: Annotations applied to the Job and its pod.
      type: object
      additionalProperties: {type: string}
    command:
      title: Command
      description: Left blank, the worker starts the flow run itself.
      anyOf: [{type: string}, {type: "null"}]
      default: null
    namespace:
      title: Namespace
      description: The namespace the Jobs are created in (the release's).
      type: string
      default: {{ .Release.Namespace | quote }}
    image:
      title: Image
      description: The flows image.
      type: string
      default: {{ include "switchboard.image" (dict "image" .Values.flowsImage "chart" .Chart) | quote }}
    image_pull_policy:
      title: Image Pull Policy
      type: string
      enum: [IfNotPresent, Always, Never]
      default: {{ .Values.flowsImage.pullPolicy | quote }}
    backoff_limit:
      title: Backoff Limit
      description: 0 lets Prefect reschedule a run whose pod was evicted.
      type: integer
      minimum: 0
      default: 0
    finished_job_ttl:
      title: Finished Job TTL
      description: Seconds a finished Job is kept.
      anyOf: [{type: integer}, {type: "null"}]
      default: {{ $v.finishedJobTtlSeconds }}
    job_watch_timeout_seconds:
      title: Job Watch Timeout Seconds
      anyOf: [{type: integer}, {type: "null"}]
      default: null
    pod_watch_timeout_seconds:
      title: Pod Watch Timeout Seconds
      type: integer
      default: 300
    stream_output:
      title: Stream Output
      type: boolean
      default: true
    cpu_request:
      title: CPU Request
      type: string
      default: {{ $v.runResources.requests.cpu | quote }}
    cpu_limit:
      title: CPU Limit
      type: string
      default: {{ $v.runResources.limits.cpu | quote }}
    memory_request:
      title: Memory Request
      type: string
      default: {{ $v.runResources.requests.memory | quote }}
    memory_limit:
      title: Memory Limit
      type: string
      default: {{ $v.runResources.limits.memory | quote }}
{{- end -}}
