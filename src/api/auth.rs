//! Bearer-token authentication and the scope rules. Admin and service tokens are compared in
//! constant time; user-scoped tokens are HMAC-signed (see `tokens`) and valid only while their
//! epoch is their user's (see `users::epochs`).

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::model::now_ms;
use crate::tokens::{TokenError, TokenSigner, looks_like_user_token};
use crate::users::TokenEpochs;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    /// The web backend, acting for any user.
    Service,
    /// A user-scoped token: only that user's resources. With the token's epoch, so a stream
    /// opened with it ends when it is revoked.
    User(String, u64),
}

impl Principal {
    pub fn rate_key(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Service => "service".into(),
            Principal::User(id, _) => format!("user:{id}"),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            _ => Err(ApiError::Forbidden(
                "this route needs the admin token".into(),
            )),
        }
    }

    /// Admin or service.
    pub fn require_service(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin | Principal::Service => Ok(()),
            Principal::User(..) => Err(ApiError::Forbidden(
                "this route needs the service or admin token".into(),
            )),
        }
    }

    /// Admin, service, or the user themselves.
    pub fn require_user(&self, user_id: &str) -> Result<(), ApiError> {
        match self {
            Principal::User(own, _) if own != user_id => Err(ApiError::Forbidden(
                "this token may only reach its own user's resources".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The user a token is confined to, if any.
    pub fn user_scope(&self) -> Option<&str> {
        match self {
            Principal::User(id, _) => Some(id),
            _ => None,
        }
    }

    /// Whether this token may subscribe to a WebSocket channel.
    pub fn may_see_channel(&self, channel: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Service => channel.starts_with("user:"),
            Principal::User(id, _) => channel.strip_prefix("user:") == Some(id.as_str()),
        }
    }
}

pub struct Authenticator {
    admin: Option<[u8; 32]>,
    service: Option<[u8; 32]>,
    signer: TokenSigner,
    epochs: Arc<TokenEpochs>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Authenticator {
    pub fn new(
        admin: Option<&SecretString>,
        service: Option<&SecretString>,
        signer: TokenSigner,
        epochs: Arc<TokenEpochs>,
    ) -> Authenticator {
        Authenticator {
            admin: admin.map(|t| digest(t.expose_secret())),
            service: service.map(|t| digest(t.expose_secret())),
            signer,
            epochs,
        }
    }

    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    pub fn epochs(&self) -> &Arc<TokenEpochs> {
        &self.epochs
    }

    /// Mints a user token at the user's current epoch.
    pub fn mint(&self, user_id: &str, now_secs: i64, ttl_secs: u64) -> String {
        self.signer
            .mint(user_id, self.epochs.current(user_id), now_secs, ttl_secs)
    }

    /// Resolves when the principal's token is revoked; never for admin and service tokens.
    pub async fn revoked(&self, principal: &Principal) {
        match principal {
            Principal::User(id, epoch) => self.epochs.revoked(id, *epoch).await,
            _ => std::future::pending().await,
        }
    }

    /// Parses `Authorization: Bearer <token>`.
    pub fn from_header(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        let header = header.ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization must be `Bearer <token>`".into())
            })?;
        self.from_token(token)
    }

    pub fn from_token(&self, token: &str) -> Result<Principal, ApiError> {
        if looks_like_user_token(token) {
            return match self.signer.verify(token, now_ms() / 1000) {
                Ok(claims) if claims.ep != self.epochs.current(&claims.sub) => {
                    Err(ApiError::Unauthorized("token has been revoked".into()))
                }
                Ok(claims) => Ok(Principal::User(claims.sub, claims.ep)),
                Err(TokenError::Expired) => Err(ApiError::Unauthorized("token has expired".into())),
                Err(_) => Err(ApiError::Unauthorized("invalid token".into())),
            };
        }
        // Hashing first makes the comparison constant-time regardless of length.
        let presented = digest(token);
        let is =
            |expected: &Option<[u8; 32]>| expected.is_some_and(|e| bool::from(e.ct_eq(&presented)));
        if is(&self.admin) {
            Ok(Principal::Admin)
        } else if is(&self.service) {
            Ok(Principal::Service)
        } else {
            Err(ApiError::Unauthorized("invalid token".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        Authenticator::new(
            Some(&SecretString::from("admin-token-0123456789")),
            Some(&SecretString::from("service-token-0123456789")),
            TokenSigner::from_key(vec![1; 32]),
            Arc::default(),
        )
    }

    #[test]
    fn recognises_each_kind() {
        let auth = authenticator();
        assert_eq!(
            auth.from_header(Some("Bearer admin-token-0123456789"))
                .unwrap(),
            Principal::Admin
        );
        assert_eq!(
            auth.from_header(Some("Bearer service-token-0123456789"))
                .unwrap(),
            Principal::Service
        );
        let token = auth.mint("u1", now_ms() / 1000, 60);
        assert_eq!(
            auth.from_header(Some(&format!("Bearer {token}"))).unwrap(),
            Principal::User("u1".into(), 0)
        );
        auth.epochs().note("u1", 1);
        assert!(matches!(
            auth.from_header(Some(&format!("Bearer {token}"))),
            Err(ApiError::Unauthorized(_))
        ));
        let fresh = auth.mint("u1", now_ms() / 1000, 60);
        assert_eq!(
            auth.from_token(&fresh).unwrap(),
            Principal::User("u1".into(), 1)
        );
        for bad in [
            None,
            Some("admin-token-0123456789"),
            Some("Bearer "),
            Some("Bearer nope"),
        ] {
            assert!(
                matches!(auth.from_header(bad), Err(ApiError::Unauthorized(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn scopes() {
        let user = Principal::User("u1".into(), 0);
        assert!(user.require_user("u1").is_ok());
        assert!(user.require_user("u2").is_err());
        assert!(user.require_service().is_err());
        assert!(Principal::Service.require_admin().is_err());
        assert!(user.may_see_channel("user:u1"));
        assert!(!user.may_see_channel("user:u2"));
        assert!(!user.may_see_channel("admin"));
        assert!(!Principal::Service.may_see_channel("admin"));
        assert!(Principal::Admin.may_see_channel("admin"));
    }
}
