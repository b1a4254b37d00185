#!/usr/bin/env bash
# Three voxgate nodes, one Redis and nginx in front of them, as plain processes on this machine
# (issue 17; docs/operations.md). No root, no containers; everything stops on Ctrl+C.
#
#   deploy/run-local.sh                         # local engine on every node (offline)
#   OPENAI_API_KEY=sk-... deploy/run-local.sh --backend openai
#
# Then open http://127.0.0.1:${VOXGATE_LB_PORT:-8100}/ (the console through nginx: sign in with a
# login link printed by any node, then reload through port 8100) or point a client at
# ws://127.0.0.1:8100/v1/realtime. Try `kill -9` on a node, or `kill -TERM` (a drain): calls
# resume on the others. Logs: $WORK/node-*.log, $WORK/redis.log, $WORK/nginx.log.
#
# Settings (environment): VOXGATE_LB_PORT (8100), VOXGATE_NODE_PORTS ("8101 8102 8103"),
# VOXGATE_API_KEYS (generated once and printed), VOXGATE_SECRET (generated; every node must
# share it), REDIS_PORT (6390), WORK (a temp dir). Extra arguments go to every `voxgate serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
VOXGATE="${VOXGATE:-.venv/bin/voxgate}"
LB_PORT="${VOXGATE_LB_PORT:-8100}"
NODE_PORTS=(${VOXGATE_NODE_PORTS:-8101 8102 8103})
REDIS_PORT="${REDIS_PORT:-6390}"
WORK="${WORK:-$(mktemp -d -t voxgate-deploy-XXXX)}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
command -v redis-server >/dev/null || { echo "needs redis-server (scripts/system-deps)" >&2; exit 1; }
[ -x "$NGINX" ] || { echo "needs nginx (scripts/system-deps)" >&2; exit 1; }
export VOXGATE_SECRET="${VOXGATE_SECRET:-$(head -c 32 /dev/urandom | base64 | tr -d '/+=')}"
export VOXGATE_API_KEYS="${VOXGATE_API_KEYS:-vk-$(head -c 24 /dev/urandom | base64 | tr -d '/+=')}"
export VOXGATE_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
export VOXGATE_FORWARDED_ALLOW_IPS="${VOXGATE_FORWARDED_ALLOW_IPS:-127.0.0.1}"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
  >"$WORK/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

upstreams=""
for i in "${!NODE_PORTS[@]}"; do
  port="${NODE_PORTS[$i]}"
  VOXGATE_NODE_ID="node-$i" "$VOXGATE" serve --port "$port" --log-format json "$@" \
    >"$WORK/node-$i.log" 2>&1 &
  pids+=($!)
  upstreams+="        server 127.0.0.1:${port} max_fails=0;"$'\n'
done
for i in "${!NODE_PORTS[@]}"; do
  until grep -q '"event":"voxgate.serving"' "$WORK/node-$i.log" 2>/dev/null; do sleep 0.2; done
done

python3 - "$WORK" "$LB_PORT" "$upstreams" <<'PY'
import sys, pathlib
work, port, upstreams = sys.argv[1], sys.argv[2], sys.argv[3].rstrip("\n")
text = pathlib.Path("deploy/nginx.conf.template").read_text()
text = text.replace("${LISTEN}", f"127.0.0.1:{port}").replace("${UPSTREAMS}", upstreams)
pathlib.Path(work, "nginx.conf").write_text(text.replace("${PREFIX}", work))
PY
"$NGINX" -p "$WORK" -c "$WORK/nginx.conf" >"$WORK/nginx.log" 2>&1 &
pids+=($!)
until grep -q "start worker processes" "$WORK/nginx.log" 2>/dev/null; do
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$WORK/nginx.log" >&2; exit 1; }
  sleep 0.1
done

echo "voxgate: ${#NODE_PORTS[@]} nodes behind nginx on http://127.0.0.1:${LB_PORT}"
echo "  realtime: ws://127.0.0.1:${LB_PORT}/v1/realtime?model=gpt-realtime"
echo "  server key: ${VOXGATE_API_KEYS}"
echo "  console login (node 0): $(grep -o '"console":"[^"]*"' "$WORK/node-0.log" | cut -d'"' -f4)"
echo "  logs: $WORK   (Ctrl+C stops everything)"
wait -n "${pids[@]}"
