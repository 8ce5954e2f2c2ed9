//! The domain records and their status enums. Every status change goes through
//! [`Status::transition`], so an illegal transition is an error, never a silent write.

mod auth_session;
mod conversation;
#[cfg(test)]
pub mod fixtures;
mod prompt;
mod records;
pub mod tables;
mod user;
mod vm;

pub use crate::providers::Provider;
pub use auth_session::{AuthSession, AuthSessionStatus};
pub use conversation::{Conversation, TITLE_CHARS, title_of};
pub use prompt::{Prompt, PromptStatus};
pub use records::{
    Credential, DeadLetter, IpLease, MetricsSample, OutboxEntry, PortHealth, PortLease, VaultKey,
    VaultKeyState, credential_key,
};
pub use records::{TaskOutcome, TaskRun};
pub use user::{Plan, User, UserStatus};
pub use vm::{AgentInfo, GuestImage, Vm, VmIntent, VmOp, VmStatus, VmType};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{entity} cannot go from {from} to {to}")]
    IllegalTransition {
        entity: &'static str,
        from: &'static str,
        to: &'static str,
    },
    #[error("unknown {kind} {value:?}; expected one of: {expected}")]
    UnknownVariant {
        kind: &'static str,
        value: String,
        expected: String,
    },
}

impl ModelError {
    /// The machine-readable code clients see for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ModelError::IllegalTransition { .. } => "illegal_transition",
            ModelError::UnknownVariant { .. } => "invalid_field",
        }
    }
}

/// A record's timestamp as RFC 3339 (UTC), the form the API and the mirror show.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// An optional integer field that also takes an integral float (`30.0`): JSON Schema's
/// `integer`, which the OpenAPI document promises, is any number with no fractional part.
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    });
    whole
        .and_then(|n| T::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| {
            D::Error::custom(format!(
                "invalid value: {number}, expected a whole number in range"
            ))
        })
}

/// Milliseconds since the Unix epoch, the timestamp unit of every record.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A status enum with a transition table.
pub trait Status: Copy + PartialEq + Sized + 'static {
    const ENTITY: &'static str;
    fn as_str(self) -> &'static str;
    /// The transition table. Staying in the same status is always allowed.
    fn allows(self, next: Self) -> bool;

    fn can_transition_to(self, next: Self) -> bool {
        self == next || self.allows(next)
    }

    fn transition(&mut self, next: Self) -> Result<(), ModelError> {
        if !self.can_transition_to(next) {
            return Err(ModelError::IllegalTransition {
                entity: Self::ENTITY,
                from: self.as_str(),
                to: next.as_str(),
            });
        }
        *self = next;
        Ok(())
    }
}

/// Declares a snake_case enum with `as_str`, `FromStr`, `Display` and `ALL`.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::model::ModelError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::model::ModelError::UnknownVariant {
                        kind: $kind,
                        value: s.to_string(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use named_enum;

/// Implements [`Status`] from a table of allowed successors.
macro_rules! transitions {
    ($name:ident, $entity:literal { $($from:ident => [$($to:ident),*]),+ $(,)? }) => {
        impl $crate::model::Status for $name {
            const ENTITY: &'static str = $entity;
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
            fn allows(self, next: Self) -> bool {
                match self {
                    $($name::$from => [$($name::$to),*].contains(&next),)+
                }
            }
        }
    };
}
pub(crate) use transitions;
