#!/bin/sh
# The app's entry point on balenaOS: the site's config is the EDGECV_APP_CONFIG device variable (YAML),
# written to the persistent volume; without it the app refuses to start with the reason in the log.
set -eu
config=${EDGECV_APP_CONFIG_FILE:-/data/app.yaml}
if [ -n "${EDGECV_APP_CONFIG:-}" ]; then
  umask 077
  printf '%s\n' "$EDGECV_APP_CONFIG" > "$config.tmp" && mv "$config.tmp" "$config"
fi
if [ ! -f "$config" ]; then
  echo "edgecv: no app config: set the EDGECV_APP_CONFIG device variable (YAML, see app/config.py)" >&2
  exit 78
fi
exec edgecv app run --config "$config"
