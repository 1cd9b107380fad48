#!/usr/bin/env bash
# Where one worker's CPU goes per message: smtp-source -> mailproxy -> smtp-sink, 2 KB
# messages, the bench config (access plugin, XCLIENT, metrics on).
#
#   bench/profile.sh [MESSAGES] [SESSIONS] [cpu|perf|cprofile]
#
# cpu:      user and system CPU per message, from /proc/PID/stat (the default)
# perf:     plus `perf record`, reported by shared object (interpreter, kernel, uvloop)
# cprofile: the proxy under cProfile; Python calls per message and the top entries by
#           own time (wall-clock, so syscalls that get preempted look expensive)
# Run as root from the repository (smtp-sink drops to nobody). Loopback only; bounded by
# MESSAGES (default 4000) and a 300 s timeout. PROFILE_OUT=FILE keeps the cProfile data.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-4000}; SESSIONS=${2:-20}; MODE=${3:-cpu}
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SINK_PORT=$(port); PORT=$(port); METRICS_PORT=$(port)
smtp-sink -u nobody -c "inet:127.0.0.1:$SINK_PORT" 1024 >/dev/null 2>&1 &
.venv/bin/python - "$WORK/mailproxy.toml" "$PORT" "$SINK_PORT" "$METRICS_PORT" <<'PY'
import string, sys
from pathlib import Path
template = string.Template(Path("bench/mailproxy-bench.toml.in").read_text())
Path(sys.argv[1]).write_text(template.substitute(
    workers=1, port=sys.argv[2], sink_port=sys.argv[3], metrics_port=sys.argv[4],
    enabled='["access"]', directories="[]",
))
PY
PROXY=(.venv/bin/python -m mailproxy.cli run -c "$WORK/mailproxy.toml")
[ "$MODE" = cprofile ] && PROXY=(.venv/bin/python -m cProfile -o "$WORK/proxy.prof" -m mailproxy.cli run -c "$WORK/mailproxy.toml")
"${PROXY[@]}" >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
[ "$MODE" = perf ] && { perf record -F 2000 -g -p "$PROXY_PID" -o "$WORK/perf.data" >/dev/null 2>&1 & }
read -r USER1 SYS1 < <(awk '{print $14, $15}' "/proc/$PROXY_PID/stat")
START=$(date +%s.%N)
timeout 300 smtp-source -s "$SESSIONS" -m "$MESSAGES" -l 2048 -f a@sender.example -t u@example.test "inet:127.0.0.1:$PORT"
END=$(date +%s.%N)
read -r USER2 SYS2 < <(awk '{print $14, $15}' "/proc/$PROXY_PID/stat")
python3 -c "
n, tick = $MESSAGES, 1e6 / $(getconf CLK_TCK)
user, system = ($USER2 - $USER1) * tick / n, ($SYS2 - $SYS1) * tick / n
print(f'{n / ($END - $START):.0f} msg/s at $SESSIONS sessions; per message: user {user:.0f} us, system {system:.0f} us, total {user + system:.0f} us')"
if [ "$MODE" = perf ]; then
    kill -INT %perf 2>/dev/null || pkill -INT -f "perf record -F 2000 -g -p $PROXY_PID"; sleep 2
    perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
fi
kill -TERM "$PROXY_PID"; wait "$PROXY_PID" || true
if [ "$MODE" = cprofile ]; then
    .venv/bin/python - "$WORK/proxy.prof" "$MESSAGES" <<'PY'
import pstats, sys
stats = pstats.Stats(sys.argv[1])
messages = int(sys.argv[2])
print(f"Python calls per message: {sum(v[1] for v in stats.stats.values()) / messages:.0f}")
stats.sort_stats("tottime").print_stats(15)
PY
    [ -n "${PROFILE_OUT:-}" ] && cp "$WORK/proxy.prof" "$PROFILE_OUT"
fi
