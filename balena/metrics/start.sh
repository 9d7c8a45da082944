#!/bin/sh
# Render the agent's config from the device's variables, then run Prometheus in agent mode.
set -eu
: "${EDGECV_REMOTE_WRITE_URL:?set the EDGECV_REMOTE_WRITE_URL fleet variable}"
: "${BALENA_DEVICE_UUID:?not on balenaOS?}"
envsubst < /etc/edgecv/prometheus.yml.tmpl > /prometheus/prometheus.yml
exec prometheus --config.file=/prometheus/prometheus.yml --enable-feature=agent \
  --storage.agent.path=/prometheus/agent --web.listen-address=127.0.0.1:9090
