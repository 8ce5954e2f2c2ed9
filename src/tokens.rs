//! User-scoped bearer tokens: `mcu1.<claims>.<signature>`, where the claims are base64url JSON
//! `{sub, ep, iat, exp}` (`ep`: the user's token epoch at minting, see `users::epochs`; a token
//! from before epochs has none, which reads as 0) and the signature is HMAC-SHA256 over `mcu1.<claims>`. The signing key is
//! configured (`MC_TOKEN_SIGNING_KEY`) or generated once into the data directory.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "mcu1";
pub const KEY_FILE_NAME: &str = "user-token.key";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("cannot load the token signing key {path}: {reason}")]
    Key { path: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    pub sub: String,
    #[serde(default)]
    pub ep: u64,
    pub iat: i64,
    pub exp: i64,
}

pub struct TokenSigner {
    key: SecretBox<Vec<u8>>,
}

impl TokenSigner {
    pub fn from_key(key: Vec<u8>) -> TokenSigner {
        TokenSigner {
            key: SecretBox::new(Box::new(key)),
        }
    }

    /// Uses the configured key, or the key file in `data_dir`, creating it (mode 0600) on first
    /// use.
    pub fn load(
        configured: Option<&SecretString>,
        data_dir: &Path,
    ) -> Result<TokenSigner, TokenError> {
        if let Some(key) = configured {
            return Ok(Self::from_key(key.expose_secret().as_bytes().to_vec()));
        }
        let path = data_dir.join(KEY_FILE_NAME);
        let key_error = |reason: String| TokenError::Key {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read(&path) {
            Ok(key) if key.len() >= 32 => return Ok(Self::from_key(key)),
            Ok(_) => return Err(key_error("shorter than 32 bytes".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_error(e.to_string())),
        }
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).map_err(|e| key_error(e.to_string()))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| key_error(e.to_string()))?;
        file.write_all(&key)
            .and_then(|()| file.sync_all())
            .map_err(|e| key_error(e.to_string()))?;
        Ok(Self::from_key(key))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(self.key.expose_secret())
            .expect("HMAC takes any key length")
    }

    pub fn mint(&self, user_id: &str, epoch: u64, now_secs: i64, ttl_secs: u64) -> String {
        let claims = UserClaims {
            sub: user_id.to_string(),
            ep: epoch,
            iat: now_secs,
            exp: now_secs.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
        };
        let body = serde_json::to_vec(&claims).unwrap_or_default();
        let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(body));
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{signature}")
    }

    /// Checks the signature in constant time, then the expiry.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<UserClaims, TokenError> {
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (prefix, body) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let claims: UserClaims =
            serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now_secs {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

pub fn looks_like_user_token(token: &str) -> bool {
    token.starts_with("mcu1.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify() {
        let signer = TokenSigner::from_key(vec![7; 32]);
        let token = signer.mint("user-1", 0, 1000, 60);
        assert!(looks_like_user_token(&token));
        let claims = signer.verify(&token, 1010).unwrap();
        assert_eq!(claims.sub, "user-1");
        assert!(matches!(
            signer.verify(&token, 1060),
            Err(TokenError::Expired)
        ));
    }

    #[test]
    fn tampering_and_other_keys_fail() {
        let signer = TokenSigner::from_key(vec![7; 32]);
        let token = signer.mint("user-1", 0, 1000, 60);
        let other = TokenSigner::from_key(vec![8; 32]);
        assert!(matches!(
            other.verify(&token, 1001),
            Err(TokenError::BadSignature)
        ));
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin","iat":0,"exp":99999}"#);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert!(matches!(
            signer.verify(&forged, 1001),
            Err(TokenError::BadSignature)
        ));
        assert!(matches!(
            signer.verify("nonsense", 1001),
            Err(TokenError::Malformed)
        ));
    }

    #[test]
    fn key_file_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = TokenSigner::load(None, dir.path()).unwrap();
        let token = first.mint("u", 0, 1, 100);
        let second = TokenSigner::load(None, dir.path()).unwrap();
        assert!(second.verify(&token, 2).is_ok());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
