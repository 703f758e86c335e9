#!/usr/bin/env bash
# Generates a throwaway CA and certificates for a TLS/mTLS metalraft cluster
# with openssl (for trying things out and for deploy/test-tls.sh; use your
# own PKI in production).
#
#   deploy/gen-certs.sh DIR [MEMBER...]      (members default: m1 m2 m3)
#   SAN_EXTRA='DNS:*.metalraft-peer,...' deploy/gen-certs.sh DIR tls
#                                            (extra SANs on every member's
#                                            certificate, e.g. one certificate
#                                            for all pods of a StatefulSet)
#
# Writes into DIR:
#   ca.crt, ca.key                 the CA (trusted by members and clients)
#   MEMBER.crt, MEMBER.key         one per member, SAN DNS:MEMBER, DNS:localhost,
#                                  IP:127.0.0.1; usages serverAuth + clientAuth
#                                  (one pair serves both the client and the peer
#                                  port, and a follower relaying to the leader
#                                  presents it as a client)
#   client.crt, client.key         a client certificate for etcdctl
#   rogue-ca.crt, rogue-client.crt, rogue-client.key
#                                  a certificate from another CA, which an mTLS
#                                  member must refuse
# Keys are mode 0644 so the image's non-root user (65532) can read them from
# a bind mount; keep DIR itself private.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DIR [MEMBER...]" >&2; exit 2; }
DIR="$1"
shift
MEMBERS=("$@")
[ ${#MEMBERS[@]} -gt 0 ] || MEMBERS=(m1 m2 m3)
DAYS=30
mkdir -p "$DIR"
cd "$DIR"

ca() { # name
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$DAYS" \
        -subj "/CN=$1" -keyout "$1.key" -out "$1.crt" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        2>/dev/null
}
leaf() { # name ca san
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
        -keyout "$1.key" -out "$1.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days "$DAYS" \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

ca ca
for m in "${MEMBERS[@]}"; do
    leaf "$m" ca "DNS:$m,DNS:localhost,IP:127.0.0.1${SAN_EXTRA:+,$SAN_EXTRA}"
done
leaf client ca "DNS:client"
ca rogue-ca
leaf rogue-client rogue-ca "DNS:client"
rm -f ./*.srl
chmod 0644 ./*.key
echo "certificates for ${MEMBERS[*]} in $DIR"
