#!/bin/sh
# Asterisk in the extbill compose setup: write the two files that come from the
# environment, then run Asterisk in the foreground as the asterisk user.
#   EXTBILL_AMI_SECRET  the [extbill] AMI user's secret (required; the same as extbill's)
#   EXTBILL_AMI_PERMIT  where the extbill container connects from (address/mask)
#   EXTBILL_AGI         where the dialplan sends FastAGI requests (host:port)
set -eu

: "${EXTBILL_AMI_SECRET:?set EXTBILL_AMI_SECRET (docker/.env)}"
EXTBILL_AMI_PERMIT=${EXTBILL_AMI_PERMIT:-127.0.0.1/255.255.255.255}
EXTBILL_AGI=${EXTBILL_AGI:-extbill:4573}

# Values go into Asterisk config files: no newlines, no ';' (a comment there).
for value in "$EXTBILL_AMI_SECRET" "$EXTBILL_AMI_PERMIT" "$EXTBILL_AGI"; do
    case "$value" in
        *"
"* | *";"*) echo "asterisk-entrypoint: EXTBILL_* values must not contain ';' or newlines" >&2; exit 1 ;;
    esac
done

# #included by docker/asterisk/extensions.conf after extbill's dialplan (the last wins).
cat > /etc/asterisk/extbill-env.conf <<CONF
; written by asterisk-entrypoint.sh at each start from EXTBILL_AGI
[globals](+)
EXTBILL_AGI=${EXTBILL_AGI}
CONF

# Debian's manager.conf has [general] (enabled, port 5038, bindaddr 127.0.0.1) and then
# #include "manager.d/*.conf": (+) adds extbill's settings to that first [general]
# (Asterisk ignores a second plain [general]); the later bindaddr wins.
umask 027
cat > /etc/asterisk/manager.d/extbill.conf <<CONF
; written by asterisk-entrypoint.sh at each start
[general](+)
enabled = yes
bindaddr = 0.0.0.0
timestampevents = yes
channelvars = EXTBILL_ID

[extbill]
secret = ${EXTBILL_AMI_SECRET}
deny = 0.0.0.0/0.0.0.0
permit = ${EXTBILL_AMI_PERMIT}
read = system,call
write = reporting,call,originate
writetimeout = 1000
CONF
chgrp asterisk /etc/asterisk/manager.d/extbill.conf /etc/asterisk/extbill-env.conf

exec /usr/sbin/asterisk -f -U asterisk -G asterisk -vvv
