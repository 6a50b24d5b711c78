//! Registry login tokens: what `GetAuthorizationToken` hands out and `docker login` sends
//! back as the password of user `AWS`. A token is self-contained and needs no server state:
//!
//! ```text
//! FLT1.<base64url(JSON {"k": access key id, "r": region, "e": expiry, unix seconds})>.<base64url(MAC)>
//! MAC = HMAC-SHA256(HMAC-SHA256(secret access key, "flotilla-registry-token-v1"), payload)
//! ```
//!
//! It is keyed by the secret of the API key that asked for it, so it is checked against the
//! same credentials as the API: a token stops working when it expires or when its key is
//! removed from the server. Pure: the caller passes the time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flotilla_api::sigv4::CredentialsProvider;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a token is valid (ECR's is 12 hours too).
pub const TOKEN_LIFETIME_SECONDS: i64 = 12 * 60 * 60;
/// The user name `docker login` is given (ECR's).
pub const TOKEN_USER: &str = "AWS";
const VERSION: &str = "FLT1";
const CONTEXT: &[u8] = b"flotilla-registry-token-v1";

#[derive(Serialize, Deserialize)]
struct Payload {
    k: String,
    r: String,
    e: i64,
}

/// Who a valid token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    pub access_key_id: String,
    pub region: String,
    pub expires_at_seconds: i64,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the authorization token is malformed")]
    Malformed,
    #[error("the authorization token was issued for an access key this server does not know")]
    UnknownKey,
    #[error("the authorization token's signature is invalid")]
    BadSignature,
    #[error("the authorization token has expired; get a new one with `aws ecr get-login-password`")]
    Expired,
}

fn mac(secret: &str, payload: &[u8]) -> Hmac<Sha256> {
    let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts any key length");
    derive.update(CONTEXT);
    let key = derive.finalize().into_bytes();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC accepts any key length");
    mac.update(payload);
    mac
}

/// Mints a token for `access_key_id` (whose secret is `secret`) in `region`, valid until
/// `now_seconds + TOKEN_LIFETIME_SECONDS`.
pub fn mint(access_key_id: &str, secret: &str, region: &str, now_seconds: i64) -> String {
    let payload = serde_json::to_vec(&Payload {
        k: access_key_id.to_owned(),
        r: region.to_owned(),
        e: now_seconds + TOKEN_LIFETIME_SECONDS,
    })
    .unwrap_or_default();
    let tag = mac(secret, &payload).finalize().into_bytes();
    format!(
        "{VERSION}.{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// Checks a token at `now_seconds` against the server's credentials.
pub fn verify(
    token: &str,
    credentials: &impl CredentialsProvider,
    now_seconds: i64,
) -> Result<TokenClaims, TokenError> {
    let mut pieces = token.split('.');
    let (Some(VERSION), Some(payload), Some(tag), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
    else {
        return Err(TokenError::Malformed);
    };
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Payload = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    let secret = credentials
        .secret_for(&claims.k)
        .ok_or(TokenError::UnknownKey)?;
    mac(&secret, &payload)
        .verify_slice(&tag)
        .map_err(|_| TokenError::BadSignature)?;
    if now_seconds >= claims.e {
        return Err(TokenError::Expired);
    }
    Ok(TokenClaims {
        access_key_id: claims.k,
        region: claims.r,
        expires_at_seconds: claims.e,
    })
}

/// Reads `Authorization: Basic base64(AWS:<token>)` and returns the token.
pub fn from_basic_auth(header: &str) -> Option<String> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (user == TOKEN_USER).then(|| password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::sigv4::Credentials;

    fn keys() -> Vec<Credentials> {
        vec![Credentials::new("AKID", "secret-one")]
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let token = mint("AKID", "secret-one", "eu-west-1", 1_000);
        let claims = verify(&token, &keys(), 1_000).unwrap();
        assert_eq!(claims.region, "eu-west-1");
        assert_eq!(claims.expires_at_seconds, 1_000 + TOKEN_LIFETIME_SECONDS);
        assert!(verify(&token, &keys(), 1_000 + TOKEN_LIFETIME_SECONDS - 1).is_ok());
        assert_eq!(
            verify(&token, &keys(), 1_000 + TOKEN_LIFETIME_SECONDS),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn forged_altered_or_foreign_tokens_are_refused() {
        let token = mint("AKID", "wrong-secret", "us-east-1", 0);
        assert_eq!(verify(&token, &keys(), 1), Err(TokenError::BadSignature));
        let token = mint("OTHER", "secret-one", "us-east-1", 0);
        assert_eq!(verify(&token, &keys(), 1), Err(TokenError::UnknownKey));
        let token = mint("AKID", "secret-one", "us-east-1", 0);
        let mut pieces: Vec<&str> = token.split('.').collect();
        let longer = URL_SAFE_NO_PAD.encode(br#"{"k":"AKID","r":"us-east-1","e":99999999999}"#);
        pieces[1] = &longer;
        assert_eq!(
            verify(&pieces.join("."), &keys(), 1),
            Err(TokenError::BadSignature)
        );
        for bad in ["", "FLT1", "FLT1.a.b.c", "XXX.e30.AA", "FLT1.!!.AA"] {
            assert_eq!(verify(bad, &keys(), 1), Err(TokenError::Malformed), "{bad}");
        }
    }

    #[test]
    fn basic_auth_carries_the_token_as_aws_password() {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("AWS:FLT1.x.y")
        );
        assert_eq!(from_basic_auth(&header).as_deref(), Some("FLT1.x.y"));
        let other = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("bob:pw")
        );
        assert_eq!(from_basic_auth(&other), None);
    }
}
