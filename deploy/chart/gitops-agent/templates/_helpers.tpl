{{/* Names, labels and the agent's config, shared by the templates. */}}

{{- define "gitops-agent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gitops-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gitops-agent.labels" -}}
{{ include "gitops-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "gitops-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gitops-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gitops-agent.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "gitops-agent.persistence" -}}
{{- if eq .Values.persistence.type "auto" -}}
{{- if eq .Values.mode "perNode" }}hostPath{{ else }}emptyDir{{ end -}}
{{- else -}}
{{- .Values.persistence.type -}}
{{- end -}}
{{- end -}}

{{/* Where an existing Secret's key is mounted, and a CA ConfigMap's key. */}}
{{- define "gitops-agent.secretPath" -}}
{{- printf "/run/secrets/gitops-agent/%s/%s" .name .key -}}
{{- end -}}
{{- define "gitops-agent.caPath" -}}
{{- printf "/etc/gitops-agent/ca/%s/%s" .name .key -}}
{{- end -}}

{{/*
The Secrets and ConfigMaps the config refers to, as a JSON object {"secrets": [...],
"configMaps": [...]} of unique names, so each is mounted once.
*/}}
{{- define "gitops-agent.refs" -}}
{{- $secrets := list -}}
{{- $cms := list -}}
{{- $c := .Values.config | default dict -}}
{{- $git := $c.git | default dict -}}
{{- with $git.auth }}{{ with .secretRef }}{{ $secrets = append $secrets .name }}{{ end }}{{ end -}}
{{- with $git.caConfigMapRef }}{{ $cms = append $cms .name }}{{ end -}}
{{- with $git.verify -}}
{{- $verify := . -}}
{{- range $f := list "sshAllowedSigners" "openpgpKeys" -}}
{{- $v := index $verify $f | default "" -}}
{{- if kindIs "map" $v }}{{ with $v.secretRef }}{{ $secrets = append $secrets .name }}{{ end }}{{ end -}}
{{- end -}}
{{- end -}}
{{- range $c.registries | default list -}}
{{- with .auth }}{{ with .secretRef }}{{ $secrets = append $secrets .name }}{{ end }}{{ end -}}
{{- with .caConfigMapRef }}{{ $cms = append $cms .name }}{{ end -}}
{{- with .verify }}{{ with .cosign }}{{ range .publicKeys | default list -}}
{{- with .secretRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- end }}{{ end }}{{ end -}}
{{- end -}}
{{- $server := $c.server | default dict -}}
{{- range $server.webhooks | default list -}}
{{- with .secretRef }}{{ $secrets = append $secrets .name }}{{ end -}}
{{- end -}}
{{- dict "secrets" ($secrets | uniq) "configMaps" ($cms | uniq) | toJson -}}
{{- end -}}

{{/* A `secretRef` or `caConfigMapRef` turned into the file path the agent reads. */}}
{{- define "gitops-agent.resolveRefs" -}}
{{- $m := . -}}
{{- with $m.secretRef -}}
{{- $_ := set $m (ternary "secretFile" "passwordFile" (hasKey $m "sender")) (include "gitops-agent.secretPath" .) -}}
{{- end -}}
{{- $_ := unset $m "secretRef" -}}
{{- with $m.caConfigMapRef -}}
{{- $_ := set $m "caFile" (include "gitops-agent.caPath" .) -}}
{{- end -}}
{{- $_ := unset $m "caConfigMapRef" -}}
{{- end -}}

{{/*
Trusted keys from existing Secrets: a cosign public key `{name, secretRef}` becomes `{name, file}`,
and `git.verify`'s `sshAllowedSigners` or `openpgpKeys` given as `{secretRef}` becomes the path.
*/}}
{{- define "gitops-agent.resolveKeys" -}}
{{- $c := . -}}
{{- $git := $c.git | default dict -}}
{{- with $git.verify -}}
{{- $verify := . -}}
{{- range $f := list "sshAllowedSigners" "openpgpKeys" -}}
{{- $v := index $verify $f | default "" -}}
{{- if kindIs "map" $v }}{{ with $v.secretRef }}{{ $_ := set $verify $f (include "gitops-agent.secretPath" .) }}{{ end }}{{ end -}}
{{- end -}}
{{- end -}}
{{- range $c.registries | default list -}}
{{- with .verify }}{{ with .cosign }}{{ range $k := .publicKeys | default list -}}
{{- with $k.secretRef }}{{ $_ := set $k "file" (include "gitops-agent.secretPath" .) }}{{ end -}}
{{- $_ := unset $k "secretRef" -}}
{{- end }}{{ end }}{{ end -}}
{{- end -}}
{{- end -}}

{{/* The agent's config file: the values' `config` with what the chart decides. */}}
{{- define "gitops-agent.config" -}}
{{- $c := deepCopy (.Values.config | default dict) -}}
{{- $id := $c.identity | default dict -}}
{{- if eq .Values.mode "perNode" -}}
{{- $_ := set $id "perNode" true -}}
{{- $_ := unset $id "nodeName" -}}
{{- else if not $id.nodeName -}}
{{- fail "config.identity.nodeName is required in mode cluster (this cluster's name)" -}}
{{- end -}}
{{- $_ := set $c "identity" $id -}}
{{- $git := $c.git | default dict -}}
{{- if not $git.url }}{{ fail "config.git.url is required" }}{{ end -}}
{{- include "gitops-agent.resolveKeys" $c -}}
{{- include "gitops-agent.resolveRefs" $git -}}
{{- with $git.auth }}{{ include "gitops-agent.resolveRefs" . }}{{ end -}}
{{- range $c.registries | default list -}}
{{- include "gitops-agent.resolveRefs" . -}}
{{- with .auth }}{{ include "gitops-agent.resolveRefs" . }}{{ end -}}
{{- end -}}
{{- $server := $c.server | default dict -}}
{{- range $server.webhooks | default list -}}
{{- $_ := set . "sender" .sender -}}
{{- include "gitops-agent.resolveRefs" . -}}
{{- end -}}
{{- $_ := set $server "listen" (printf "0.0.0.0:%v" .Values.service.port) -}}
{{- $_ := set $c "server" $server -}}
{{- $kube := $c.kube | default dict -}}
{{- $_ := set $kube "namespace" .Release.Namespace -}}
{{- $_ := set $c "kube" $kube -}}
{{- $_ := set $c "stateDir" "/var/lib/gitops-agent" -}}
{{- $pp := .Values.prepull | default dict -}}
{{- if $pp.enabled -}}
{{- $helper := $pp.helperImage | default (include "gitops-agent.image" .) -}}
{{- $_ := set $c "prepull" (dict "enabled" true "helperImage" $helper "maxConcurrent" ($pp.maxConcurrent | default 2) "timeout" ($pp.timeout | default "30m")) -}}
{{- else -}}
{{- $_ := unset $c "prepull" -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}
