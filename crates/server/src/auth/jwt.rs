//! etcd 3.4's JWT auth tokens (`--auth-token jwt,pub-key=…,priv-key=…,
//! sign-method=…[,ttl=…]`): `Authenticate` signs a token with the private
//! key, its claims etcd's (`username`, `revision`: the auth revision at
//! issue, `exp`: now + ttl); any member holding the public key verifies
//! one without the log (docs/adr/0025-jwt-tokens.md).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// etcd's default JWT lifetime.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Sign methods served (etcd 3.4's asymmetric ones).
pub const SIGN_METHODS: [&str; 8] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
];

/// Why a `jwt` `--auth-token` value is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtConfigError {
    /// An option other than etcd's four, or one without `=`.
    #[error("unknown jwt option {0:?} (expected pub-key, priv-key, sign-method, ttl)")]
    UnknownOption(String),
    /// A required option is missing.
    #[error("jwt option {0} is missing")]
    Missing(&'static str),
    /// `sign-method` names no method served.
    #[error("jwt sign-method {0:?} is not supported (one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384)")]
    BadSignMethod(String),
    /// `ttl` is not a duration such as `5m`, or is zero.
    #[error("jwt ttl {0:?} is not a positive duration such as 5m")]
    BadTtl(String),
    /// A key file cannot be read.
    #[error("jwt {option} {path:?} cannot be read: {error}")]
    Unreadable {
        /// `pub-key` or `priv-key`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: String,
    },
    /// A key file is no PEM key for the sign method.
    #[error("jwt {option} {path:?} is not a PEM key for {method:?}: {error}")]
    BadKey {
        /// `pub-key` or `priv-key`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// The sign method.
        method: String,
        /// The parser's error.
        error: String,
    },
}

/// The parsed options of `--auth-token jwt,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOptions {
    /// `pub-key`: PEM public key file.
    pub pub_key: PathBuf,
    /// `priv-key`: PEM private key file.
    pub priv_key: PathBuf,
    /// `sign-method`.
    pub sign_method: String,
    /// `ttl`.
    pub ttl: Duration,
}

impl JwtOptions {
    /// Parses the `key=value` options after `jwt,` (`opts` is that tail).
    pub fn parse(opts: &str) -> Result<JwtOptions, JwtConfigError> {
        let (mut pub_key, mut priv_key, mut method, mut ttl) = (None, None, None, None);
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| JwtConfigError::UnknownOption(opt.to_string()))?;
            match k {
                "pub-key" => pub_key = Some(PathBuf::from(v)),
                "priv-key" => priv_key = Some(PathBuf::from(v)),
                "sign-method" => method = Some(v.to_string()),
                "ttl" => {
                    let d = crate::duration::parse_go_duration(v)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| JwtConfigError::BadTtl(v.to_string()))?;
                    ttl = Some(d);
                }
                _ => return Err(JwtConfigError::UnknownOption(opt.to_string())),
            }
        }
        let sign_method = method.ok_or(JwtConfigError::Missing("sign-method"))?;
        if !SIGN_METHODS.contains(&sign_method.as_str()) {
            return Err(JwtConfigError::BadSignMethod(sign_method));
        }
        Ok(JwtOptions {
            pub_key: pub_key.ok_or(JwtConfigError::Missing("pub-key"))?,
            priv_key: priv_key.ok_or(JwtConfigError::Missing("priv-key"))?,
            sign_method,
            ttl: ttl.unwrap_or(DEFAULT_JWT_TTL),
        })
    }

    /// Reads and checks both keys.
    pub fn load(&self) -> Result<JwtTokens, JwtConfigError> {
        let alg: Algorithm = self
            .sign_method
            .parse()
            .map_err(|_| JwtConfigError::BadSignMethod(self.sign_method.clone()))?;
        let rsa = !self.sign_method.starts_with("ES");
        let read = |option: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| JwtConfigError::Unreadable {
                option,
                path: path.clone(),
                error: e.to_string(),
            })
        };
        let bad = |option: &'static str, path: &PathBuf, e: jsonwebtoken::errors::Error| {
            JwtConfigError::BadKey {
                option,
                path: path.clone(),
                method: self.sign_method.clone(),
                error: e.to_string(),
            }
        };
        let priv_pem = read("priv-key", &self.priv_key)?;
        let pub_pem = read("pub-key", &self.pub_key)?;
        let encoding = if rsa {
            EncodingKey::from_rsa_pem(&priv_pem)
        } else {
            EncodingKey::from_ec_pem(&priv_pem)
        }
        .map_err(|e| bad("priv-key", &self.priv_key, e))?;
        let decoding = if rsa {
            DecodingKey::from_rsa_pem(&pub_pem)
        } else {
            DecodingKey::from_ec_pem(&pub_pem)
        }
        .map_err(|e| bad("pub-key", &self.pub_key, e))?;
        let tokens = JwtTokens {
            alg,
            encoding,
            decoding,
            ttl: self.ttl,
        };
        // A key of the wrong curve or a pair that does not match fails
        // here, at start-up, not at the first Authenticate.
        let probe = tokens
            .sign("probe", 0, SystemTime::now())
            .map_err(|e| bad("priv-key", &self.priv_key, e))?;
        if tokens.verify(&probe, SystemTime::now()).is_none() {
            return Err(JwtConfigError::BadKey {
                option: "pub-key",
                path: self.pub_key.clone(),
                method: self.sign_method.clone(),
                error: "it does not verify what priv-key signs".into(),
            });
        }
        Ok(tokens)
    }
}

/// etcd's claims.
#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// The loaded keys of one member.
#[derive(Clone)]
pub struct JwtTokens {
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("alg", &self.alg)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl JwtTokens {
    /// A token for `user`, issued at `now` when the auth revision is
    /// `revision`.
    pub fn sign(
        &self,
        user: &str,
        revision: u64,
        now: SystemTime,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: unix_secs(now + self.ttl),
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.encoding)
    }

    /// The user a token names and the auth revision it was issued at, if
    /// it was signed with our key and method and has not expired at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Option<(String, u64)> {
        let mut v = Validation::new(self.alg);
        // `exp` is checked below against `now`, with no leeway.
        v.validate_exp = false;
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok()?;
        (data.claims.exp > unix_secs(now)).then_some((data.claims.username, data.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (pubk, privk) = (dir.join("pub.pem"), dir.join("priv.pem"));
        std::fs::write(&pubk, kp.public_key_pem()).unwrap();
        std::fs::write(&privk, kp.serialize_pem()).unwrap();
        (pubk, privk)
    }

    #[test]
    fn options_parse_as_etcd() {
        let o =
            JwtOptions::parse("pub-key=a.pem,priv-key=b.pem,sign-method=ES256,ttl=10m").unwrap();
        assert_eq!(o.pub_key, PathBuf::from("a.pem"));
        assert_eq!(o.priv_key, PathBuf::from("b.pem"));
        assert_eq!(o.ttl, Duration::from_secs(600));
        let o = JwtOptions::parse("sign-method=RS256,pub-key=a,priv-key=b").unwrap();
        assert_eq!(o.ttl, DEFAULT_JWT_TTL);
        assert_eq!(
            JwtOptions::parse("pub-key=a,priv-key=b,sign-method=HS999"),
            Err(JwtConfigError::BadSignMethod("HS999".into()))
        );
        assert_eq!(
            JwtOptions::parse("pub-key=a,sign-method=ES256"),
            Err(JwtConfigError::Missing("priv-key"))
        );
        assert_eq!(
            JwtOptions::parse("pub-key=a,priv-key=b,sign-method=ES256,ttl=0s"),
            Err(JwtConfigError::BadTtl("0s".into()))
        );
        assert!(matches!(
            JwtOptions::parse("pub-key=a,priv-key=b,sign-method=ES256,colour=red"),
            Err(JwtConfigError::UnknownOption(_))
        ));
    }

    #[test]
    fn signed_tokens_verify_until_they_expire_and_tampering_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (pubk, privk) = keys(dir.path());
        let o = JwtOptions {
            pub_key: pubk.clone(),
            priv_key: privk.clone(),
            sign_method: "ES256".into(),
            ttl: Duration::from_secs(60),
        };
        let t = o.load().unwrap();
        let now = SystemTime::now();
        let tok = t.sign("alice", 7, now).unwrap();
        assert_eq!(t.verify(&tok, now), Some(("alice".to_string(), 7)));
        assert_eq!(t.verify(&tok, now + Duration::from_secs(61)), None);
        let mut bad = tok.clone().into_bytes();
        let i = bad.len() - 5;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        assert_eq!(t.verify(&String::from_utf8(bad).unwrap(), now), None);
        assert_eq!(t.verify("abcdefgh.3", now), None);
        // Another key pair's token is refused.
        let other = tempfile::tempdir().unwrap();
        let (p2, k2) = keys(other.path());
        let t2 = JwtOptions {
            pub_key: p2,
            priv_key: k2,
            ..o.clone()
        }
        .load()
        .unwrap();
        assert_eq!(t.verify(&t2.sign("alice", 7, now).unwrap(), now), None);
        // Mismatched pair, missing file, wrong key kind: start-up errors.
        let mixed = JwtOptions {
            pub_key: other.path().join("pub.pem"),
            ..o.clone()
        };
        assert!(matches!(mixed.load(), Err(JwtConfigError::BadKey { .. })));
        let missing = JwtOptions {
            priv_key: dir.path().join("nope.pem"),
            ..o.clone()
        };
        assert!(matches!(
            missing.load(),
            Err(JwtConfigError::Unreadable { .. })
        ));
        let rsa = JwtOptions {
            sign_method: "RS256".into(),
            ..o
        };
        assert!(matches!(rsa.load(), Err(JwtConfigError::BadKey { .. })));
    }
}
