#!/usr/bin/env bash
# Rebuild the web console's bundle (fleet/web/static/console.js) from fleet/web/frontend.
# Only needed after changing the front end: the built bundle is committed, so installing
# and running espfleet needs no Node.
set -euo pipefail
cd "$(dirname "$0")/../fleet/web/frontend"
npm ci --no-audit --no-fund
npm run build
