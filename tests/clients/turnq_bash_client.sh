#!/usr/bin/env bash
# The original turnq README's "bash + curl" client, kept as close to verbatim as possible, so the tests prove
# that it works unchanged against this server. Needs: bash, curl, jq, uuidgen (Debian: uuid-runtime).
#
# Environment:
#   TURNQ_URL        server base URL, e.g. http://127.0.0.1:3000
#   CHANNEL          channel name (used unencoded in the URL, as in the README)
#   TURNQ_API_KEY    API key
#   TURNQ_WORK_FILE  do_work appends "start"/"end" lines with a timestamp here
#   TURNQ_WORK_LABEL a label for those lines (default: the client id)
#   TURNQ_WORK_SECONDS how long do_work takes (default 0.3)

TURNQ_URL="${TURNQ_URL:?set TURNQ_URL}"
CHANNEL="${CHANNEL:?set CHANNEL}"

do_work() {
  local label="${TURNQ_WORK_LABEL:-$CLIENT_ID}"
  echo "start $label $CLIENT_ID $(date +%s.%N)" >> "${TURNQ_WORK_FILE:?set TURNQ_WORK_FILE}"
  sleep "${TURNQ_WORK_SECONDS:-0.3}"
  echo "end $label $CLIENT_ID $(date +%s.%N)" >> "$TURNQ_WORK_FILE"
}

# ---- from the README, unchanged below this line ----
CLIENT_ID=$(uuidgen)
REQUEST_ID=$(curl -s -X POST "$TURNQ_URL/channels/$CHANNEL/enqueue" \
-H "x-api-key: $TURNQ_API_KEY" \
-H "content-type: application/json" \
-d "{\"clientId\":\"$CLIENT_ID\"}" | jq -r .requestId)
curl -sN "$TURNQ_URL/channels/$CHANNEL/subscribe?clientId=$CLIENT_ID&requestId=$REQUEST_ID" \
-H "x-api-key: $TURNQ_API_KEY" | while IFS= read -r line; do
[[ "$line" == "event: your-turn" ]] || continue
do_work
curl -s -X POST "$TURNQ_URL/channels/$CHANNEL/release" \
-H "x-api-key: $TURNQ_API_KEY" \
-H "content-type: application/json" \
-d "{\"clientId\":\"$CLIENT_ID\",\"requestId\":\"$REQUEST_ID\"}"
break
done
