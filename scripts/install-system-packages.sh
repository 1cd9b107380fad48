#!/usr/bin/env bash
# Install the real servers and clients the tests and the demo run against (Debian 12).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

say() { echo "install-system-packages: $*"; }

PACKAGES=(postfix swaks libnet-ssleay-perl libio-socket-inet6-perl nginx-light
          libnginx-mod-mail dovecot-core dovecot-imapd dovecot-pop3d
          dovecot-submissiond dnsmasq-base redis-server prometheus openssl make)
PYTHON=${PYTHON:-python3}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "not root and no sudo: run me as root"; exit 1; }
    SUDO=(sudo)
fi

missing=()
for f in /usr/sbin/smtp-sink /usr/sbin/smtp-source /usr/bin/swaks /usr/sbin/nginx \
         /usr/lib/nginx/modules/ngx_mail_module.so /usr/sbin/dovecot \
         /usr/lib/dovecot/imap /usr/lib/dovecot/pop3 /usr/lib/dovecot/submission \
         /usr/sbin/dnsmasq /usr/bin/redis-server /usr/bin/prometheus /usr/bin/promtool; do
    [ -e "$f" ] || missing+=("$f")
done
command -v openssl >/dev/null || missing+=(openssl)
command -v make >/dev/null || missing+=(make)
# swaks installed without recommends silently lacks TLS (needs Net::SSLeay).
if [ -e /usr/bin/swaks ] && ! /usr/bin/swaks --support 2>&1 | grep -q '=== TLS supported'; then
    missing+=("swaks TLS support")
fi
# Debian's own python3 cannot create a venv without python3-venv (no ensurepip).
if command -v "$PYTHON" >/dev/null && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=("$PYTHON venv support")
    PACKAGES+=(python3-venv)
fi

if [ ${#missing[@]} -eq 0 ]; then
    say "all binaries present (smtp-sink, smtp-source, swaks with TLS, nginx + mail module, dovecot, dnsmasq, redis-server, prometheus + promtool, openssl, make); skipping apt"
    exit 0
fi
say "missing: ${missing[*]}"

# Keep postinst scripts from starting system daemons; undo only what we did.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    say "creating /usr/sbin/policy-rc.d (exit 101) for the duration of the install"
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
    trap 'say "removing /usr/sbin/policy-rc.d"; "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
fi

say "preseeding debconf: postfix main_mailer_type = No configuration"
echo 'postfix postfix/main_mailer_type select No configuration' | "${SUDO[@]}" debconf-set-selections

say "apt-get update"
"${SUDO[@]}" apt-get update -q

say "apt-get install ${PACKAGES[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

say "done"
