//! etcd's `simple` tokens: random strings naming a user until they have not
//! been used for the TTL (etcd's `--auth-token simple` keeps them 5
//! minutes, renewed on every use).
//!
//! As in etcd 3.4, a token is valid on every member: `Authenticate` makes
//! one ([`SimpleTokens::generate`]) and replicates it through the log
//! (`AuthOp::AssignToken`); every member records it when it applies that
//! entry ([`SimpleTokens::assign`]), so a client that authenticated on one
//! member may send its token to any other. The TTL runs per member from
//! that member's apply and last use, as in etcd. [`SimpleTokens::issue`]
//! makes a token known to this member only (the leader's answer to a
//! follower relaying a Cluster call).
//!
//! Time is an argument (`now`), so tests need no clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// etcd's simple-token TTL.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Random letters in a token (etcd's simple tokens have 16).
pub const TOKEN_RANDOM_LETTERS: usize = 16;
/// Most live tokens per member; the oldest-expiring is dropped beyond it,
/// so a client authenticating in a loop cannot grow memory without bound.
pub const MAX_TOKENS: usize = 65_536;

/// The live tokens of one member.
#[derive(Debug)]
pub struct SimpleTokens {
    ttl: Duration,
    next: u64,
    live: HashMap<String, (String, Instant)>,
}

impl Default for SimpleTokens {
    fn default() -> Self {
        SimpleTokens {
            ttl: DEFAULT_TOKEN_TTL,
            next: 1,
            live: HashMap::new(),
        }
    }
}

impl SimpleTokens {
    /// Sets the TTL of tokens handed out from now on.
    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    /// A new token for `user`, known to this member only: [`Self::generate`]
    /// then [`Self::assign`].
    pub fn issue(&mut self, user: &str, now: Instant) -> Result<String, getrandom::Error> {
        let token = self.generate()?;
        self.assign(&token, user, now);
        Ok(token)
    }

    /// A new token string, not yet naming anyone: random letters from the
    /// OS, a dot and a counter (etcd's shape).
    pub fn generate(&mut self) -> Result<String, getrandom::Error> {
        let mut raw = [0u8; TOKEN_RANDOM_LETTERS];
        getrandom::fill(&mut raw)?;
        let letters: String = raw.iter().map(|b| char::from(b'a' + b % 26)).collect();
        let token = format!("{letters}.{}", self.next);
        self.next += 1;
        Ok(token)
    }

    /// Makes `token` name `user` from `now` for the TTL (an applied
    /// `AssignToken`, or [`Self::issue`]).
    pub fn assign(&mut self, token: &str, user: &str, now: Instant) {
        self.expire(now);
        if self.live.len() >= MAX_TOKENS {
            if let Some(oldest) = self
                .live
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                self.live.remove(&oldest);
            }
        }
        self.live
            .insert(token.to_string(), (user.to_string(), now + self.ttl));
    }

    /// Whether `token` names someone here now (no renewal).
    pub fn knows(&self, token: &str, now: Instant) -> bool {
        self.live.get(token).is_some_and(|(_, t)| *t > now)
    }

    /// The user `token` names, renewing it, or `None` if unknown or
    /// expired.
    pub fn user(&mut self, token: &str, now: Instant) -> Option<String> {
        let ttl = self.ttl;
        let (user, expires) = self.live.get_mut(token)?;
        if *expires <= now {
            self.live.remove(token);
            return None;
        }
        *expires = now + ttl;
        Some(user.clone())
    }

    /// Drops every token (auth disabled, a snapshot installed).
    pub fn clear(&mut self) {
        self.live.clear();
    }

    /// Drops the tokens of `user` (deleted, or its password changed).
    pub fn invalidate_user(&mut self, user: &str) {
        self.live.retain(|_, (u, _)| u != user);
    }

    fn expire(&mut self, now: Instant) {
        self.live.retain(|_, (_, t)| *t > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_after_the_ttl_unless_used() {
        let mut t = SimpleTokens::default();
        t.set_ttl(Duration::from_secs(10));
        let t0 = Instant::now();
        let a = t.issue("alice", t0).unwrap();
        let b = t.issue("bob", t0).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.split('.').next().unwrap().len(), TOKEN_RANDOM_LETTERS);
        let s = Duration::from_secs(1);
        assert_eq!(t.user(&a, t0 + 9 * s).as_deref(), Some("alice"));
        // a was renewed at 9 s; b was not.
        assert_eq!(t.user(&b, t0 + 10 * s), None);
        assert_eq!(t.user(&a, t0 + 18 * s).as_deref(), Some("alice"));
        assert_eq!(t.user("nope", t0), None);
        let c = t.issue("carol", t0 + 18 * s).unwrap();
        t.invalidate_user("alice");
        assert_eq!(t.user(&a, t0 + 18 * s), None);
        assert_eq!(t.user(&c, t0 + 18 * s).as_deref(), Some("carol"));
        t.clear();
        assert_eq!(t.user(&c, t0 + 18 * s), None);
    }

    #[test]
    fn a_generated_token_names_nobody_until_assigned() {
        let mut t = SimpleTokens::default();
        let t0 = Instant::now();
        let g = t.generate().unwrap();
        assert!(!t.knows(&g, t0));
        assert_eq!(t.user(&g, t0), None);
        // Another member's state: the same string assigned there.
        let mut other = SimpleTokens::default();
        other.assign(&g, "alice", t0);
        assert!(other.knows(&g, t0));
        assert_eq!(other.user(&g, t0).as_deref(), Some("alice"));
        assert!(!other.knows(&g, t0 + DEFAULT_TOKEN_TTL * 2));
    }
}
