//! The user a TLS client certificate names: its subject's CommonName, as
//! etcd uses it with `--client-cert-auth` when a request carries no token.
//!
//! The certificate has been verified against `--trusted-ca-file` in the
//! handshake; this only reads the subject. The DER walk is bounds-checked
//! and returns `None` on anything unexpected: a peer can never make it
//! panic.

/// DER tag of a SEQUENCE.
const SEQUENCE: u8 = 0x30;
/// DER tag of a SET.
const SET: u8 = 0x31;
/// DER tag of an OBJECT IDENTIFIER.
const OID: u8 = 0x06;
/// Context tag `[0]` (the certificate version).
const VERSION_TAG: u8 = 0xa0;
/// The encoded OID 2.5.4.3 (id-at-commonName).
const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];
/// String types a CommonName may use: UTF8String, PrintableString,
/// TeletexString (read as Latin-1 ASCII only), IA5String.
const STRING_TAGS: &[u8] = &[0x0c, 0x13, 0x14, 0x16];

/// One DER element: tag, contents, and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, body, rest) = element(der)?;
    (t == tag).then_some((body, rest))
}

/// The subject CommonName of an X.509 certificate (DER), if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION_TAG) {
        rest = element(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (mut subject, _) = expect(rest, SEQUENCE)?;
    while !subject.is_empty() {
        let (rdn, next) = expect(subject, SET)?;
        subject = next;
        let mut attrs = rdn;
        while !attrs.is_empty() {
            let (attr, next) = expect(attrs, SEQUENCE)?;
            attrs = next;
            let (oid, value) = expect(attr, OID)?;
            if oid != COMMON_NAME_OID {
                continue;
            }
            let (tag, s, _) = element(value)?;
            if !STRING_TAGS.contains(&tag) {
                return None;
            }
            return String::from_utf8(s.to_vec()).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_common_name_is_found_and_garbage_is_not() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "org");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        assert_eq!(common_name(&der).as_deref(), Some("alice"));
        for cut in [0, 1, 10, der.len() / 2, der.len() - 1] {
            // Truncations never panic; the subject may still be complete.
            let _ = common_name(&der[..cut]);
        }
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);

        let mut no_cn = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        no_cn.distinguished_name = rcgen::DistinguishedName::new();
        let cert = no_cn.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
    }
}
