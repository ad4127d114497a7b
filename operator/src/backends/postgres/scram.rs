//! Checking a password against the SCRAM-SHA-256 verifier Postgres stores
//! (`pg_authid.rolpassword`), so a converge can tell whether the role still
//! accepts the password the operator handed out without ever logging in.
//!
//! `postgres-protocol` only builds verifiers (with a random salt), so the
//! check recomputes the keys here with ring's PBKDF2 and HMAC (RFC 5802 §3).

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::{digest, hmac, pbkdf2};

/// Above this many PBKDF2 rounds a verifier is not checked but treated as a
/// mismatch (and so replaced by a default one): a verifier planted with a huge
/// count must not tie up the operator. Postgres's default is 4096.
pub const MAX_ITERATIONS: u32 = 100_000;

/// The parts of `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: NonZeroU32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Verifier {
    /// Parses a stored verifier; `None` for anything else (an MD5 hash, or a
    /// malformed value).
    pub fn parse(stored: &str) -> Option<Self> {
        let rest = stored.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        Some(Self {
            iterations: iterations.parse().ok()?,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: STANDARD.decode(stored_key).ok()?,
            server_key: STANDARD.decode(server_key).ok()?,
        })
    }

    /// Whether `password` derives both keys. Costs `iterations` HMAC rounds.
    pub fn accepts(&self, password: &str) -> bool {
        if self.iterations.get() > MAX_ITERATIONS {
            return false;
        }
        let mut salted = [0u8; digest::SHA256_OUTPUT_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            &saslprep(password),
            &mut salted,
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
        let stored_ok = constant_time_eq(stored_key.as_ref(), &self.stored_key);
        // ring compares the tag in constant time.
        let server_ok = hmac::verify(&key, b"Server Key", &self.server_key).is_ok();
        stored_ok & server_ok
    }
}

/// Whether `stored` (a `rolpassword` value) is a SCRAM-SHA-256 verifier of
/// `password`. Anything that is not such a verifier does not match.
pub fn verifies(stored: &str, password: &str) -> bool {
    Verifier::parse(stored).is_some_and(|v| v.accepts(password))
}

/// The password as Postgres hashes it: SASLprep-normalised when possible,
/// the raw bytes otherwise (as libpq and the server do).
fn saslprep(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// Compares without an early exit, so timing does not reveal a prefix match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_from_postgres_protocol_accepts_its_password_only() {
        let stored = postgres_protocol::password::scram_sha_256(b"correct horse");
        assert!(verifies(&stored, "correct horse"));
        assert!(!verifies(&stored, "correct horsf"));
        assert!(!verifies(&stored, ""));
    }

    #[test]
    fn a_verifier_made_by_postgres_is_checked() {
        // `CREATE ROLE x PASSWORD 'secret'` on PostgreSQL 16, read from pg_authid.
        let stored = "SCRAM-SHA-256$4096:T9s16C+cD6HEBPjsitXFug==$ByCOUK6sPqOscS/kPdmcwILQkisvN0+l2NS+am9Fczo=:RyjuATIvyFDeDmWthZy65oF5pHb82UgpXhf9oZ4N0WY=";
        let parsed = Verifier::parse(stored).expect("parses");
        assert_eq!(parsed.iterations.get(), 4096);
        assert_eq!(parsed.salt.len(), 16);
        assert!(verifies(stored, "secret"));
        assert!(!verifies(stored, "Secret"));
    }

    #[test]
    fn non_ascii_passwords_are_normalised_as_postgres_does() {
        // U+00A0 (no-break space) maps to a plain space under SASLprep.
        let stored = postgres_protocol::password::scram_sha_256("a\u{a0}b".as_bytes());
        assert!(verifies(&stored, "a b"));
    }

    #[test]
    fn md5_hashes_and_malformed_values_never_match() {
        let md5 = postgres_protocol::password::md5(b"pw", "role");
        assert!(!verifies(&md5, "pw"));
        for bad in [
            "",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$0:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!$AAAA:AAAA",
            "SCRAM-SHA-256$4096:AAAA$AAAA",
        ] {
            assert!(!verifies(bad, "pw"), "{bad}");
        }
    }

    #[test]
    fn a_verifier_with_an_excessive_iteration_count_is_not_computed() {
        let stored = postgres_protocol::password::scram_sha_256(b"pw");
        let mut v = Verifier::parse(&stored).unwrap();
        v.iterations = NonZeroU32::new(MAX_ITERATIONS + 1).unwrap();
        assert!(!v.accepts("pw"));
    }
}
