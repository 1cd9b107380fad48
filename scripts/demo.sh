#!/usr/bin/env bash
# `make run`: mailproxy in the foreground with config/mailproxy.toml, in front of a
# Postfix smtp-sink on 127.0.0.1:2526 that dumps every delivered message to a file.
set -euo pipefail
cd "$(dirname "$0")/.."

SINK_PORT=2526
TLS_DIR=var/demo-tls

# The example config points at this self-signed pair.
mkdir -p "$TLS_DIR"
if [ ! -f "$TLS_DIR/cert.pem" ] || [ ! -f "$TLS_DIR/key.pem" ]; then
    echo "demo: creating a self-signed certificate for mailproxy.localdomain in $TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -sha256 \
        -subj "/CN=mailproxy.localdomain" \
        -addext "subjectAltName=DNS:mailproxy.localdomain,DNS:localhost,IP:127.0.0.1" \
        -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" 2>/dev/null
    chmod 600 "$TLS_DIR/key.pem"
fi

# smtp-sink refuses to run as root without -u, and opens its dump files after dropping
# privileges: the dump dir must be writable by that user and every parent searchable.
SINK_USER=()
SINK_DIR="$PWD/var/sink"
mkdir -p "$SINK_DIR"
chmod 1777 "$SINK_DIR"
if [ "$(id -u)" -eq 0 ]; then
    SINK_USER=(-u nobody)
    if ! runuser -u nobody -- test -w "$SINK_DIR" -a -x "$SINK_DIR" 2>/dev/null; then
        SINK_DIR=$(mktemp -d /tmp/mailproxy-sink.XXXXXX)
        chmod 1777 "$SINK_DIR"
        echo "demo: $PWD/var/sink is not reachable by user nobody; dumping to $SINK_DIR instead"
    fi
fi

smtp-sink "${SINK_USER[@]}" -d "$SINK_DIR/%H%M%S." "inet:127.0.0.1:$SINK_PORT" 100 &
SINK_PID=$!
# Not `exec mailproxy`: the shell must outlive it to stop the sink.
trap 'kill "$SINK_PID" 2>/dev/null || true' EXIT

for _ in $(seq 50); do
    kill -0 "$SINK_PID" 2>/dev/null || { echo "demo: smtp-sink failed to start (port $SINK_PORT taken?)"; exit 1; }
    (exec 3<>"/dev/tcp/127.0.0.1/$SINK_PORT") 2>/dev/null && break
    sleep 0.1
done

cat <<EOF

mailproxy demo
  upstream    smtp-sink        127.0.0.1:$SINK_PORT (pid $SINK_PID)
  mx          SMTP, STARTTLS   127.0.0.1:2525  (no AUTH; accepts mail for example.test)
  submission  SMTP, STARTTLS   127.0.0.1:2587  (AUTH only after STARTTLS)
  metrics                      http://127.0.0.1:9325/metrics

Try:
  swaks --server 127.0.0.1:2525 --to user@example.test --from a@sender.example
  swaks --server 127.0.0.1:2587 --tls --auth PLAIN --auth-user demo@example.test --auth-password demo-password --to user@example.test --from demo@example.test
  (swaks does not verify the server certificate unless given --tls-verify)
  curl -s http://127.0.0.1:9325/metrics

Delivered messages land in $SINK_DIR/, one file per message.
Ctrl-C stops the proxy and the sink.

EOF

.venv/bin/mailproxy run -c config/mailproxy.toml
