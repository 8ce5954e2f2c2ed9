//! [`Provider`]: a handle on one CLI of the registry, and the value records, API bodies and
//! metrics labels carry. It used to be an enum; its names, its order and its stored bytes are
//! those of that enum, so stores and API clients see no difference.

use std::fmt;
use std::sync::LazyLock;

use serde::de::{self, Deserializer, EnumAccess, Unexpected, VariantAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::login::LoginCommand;
use super::prompt::{CliCommand, Invocation};
use super::{Cli, REGISTRY};

/// A CLI of the registry, by its position there (which is also its order and its stored form).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Provider(usize);

/// The CLIs every build has, for code and tests that name one in particular.
pub const CLAUDE_CODE: Provider = Provider(0);
pub const CODEX: Provider = Provider(1);
pub const GEMINI_CLI: Provider = Provider(2);

/// Every provider, in the registry's order.
pub fn all() -> impl ExactSizeIterator<Item = Provider> + Clone {
    (0..REGISTRY.len()).map(Provider)
}

/// A provider by its API name (`claude_code`).
pub fn by_name(name: &str) -> Option<Provider> {
    all().find(|p| p.as_str() == name)
}

/// A provider by its API name or one of its short names (`claude`).
pub fn named(name: &str) -> Option<Provider> {
    all().find(|p| p.as_str() == name || p.cli().aliases().contains(&name))
}

/// The API names in the registry's order: what serde reports as the expected variants.
static NAMES: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| REGISTRY.iter().map(|cli| cli.name()).collect());

fn names() -> &'static [&'static str] {
    &NAMES
}

impl Provider {
    pub fn cli(self) -> &'static dyn Cli {
        REGISTRY[self.0]
    }

    pub fn as_str(self) -> &'static str {
        self.cli().name()
    }

    /// The command for one prompt, with `HOME` set to the invocation's.
    pub fn command(self, invocation: &Invocation<'_>) -> CliCommand {
        let mut command = self.cli().command(invocation);
        command
            .env
            .insert("HOME".into(), invocation.home.to_string());
        command
    }

    /// The login's command in `home`, with `HOME` set to it.
    pub fn login_command(self, home: &str) -> LoginCommand {
        let mut command = self.cli().login_command(home);
        command.env.insert("HOME".into(), home.to_string());
        command
    }

    /// Where the credential file is under `home`.
    pub fn credential_path(self, home: &str) -> String {
        format!(
            "{}/{}",
            home.trim_end_matches('/'),
            self.cli().credential_file()
        )
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no provider's. Its text is the one `model::ModelError` gives for every
/// named enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider {value:?}; expected one of: {expected}")]
pub struct UnknownProvider {
    pub value: String,
    pub expected: String,
}

impl std::str::FromStr for Provider {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        by_name(s).ok_or_else(|| UnknownProvider {
            value: s.to_string(),
            expected: names().join(", "),
        })
    }
}

// By hand, as serde derives them for a unit-only enum: the variant's index in a compact format
// (bincode, the store's), its name in a readable one (JSON).

impl Serialize for Provider {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = u32::try_from(self.0).map_err(serde::ser::Error::custom)?;
        serializer.serialize_unit_variant("Provider", index, self.as_str())
    }
}

impl<'de> Deserialize<'de> for Provider {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_enum("Provider", names(), EnumVisitor)
    }
}

struct EnumVisitor;

impl<'de> Visitor<'de> for EnumVisitor {
    type Value = Provider;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("enum Provider")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Provider, A::Error> {
        let (Variant(provider), variant) = data.variant()?;
        variant.unit_variant()?;
        Ok(provider)
    }
}

/// The variant's identifier: its index or its name.
struct Variant(Provider);

impl<'de> Deserialize<'de> for Variant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(IdentifierVisitor)
    }
}

struct IdentifierVisitor;

impl Visitor<'_> for IdentifierVisitor {
    type Value = Variant;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("variant identifier")
    }

    fn visit_u64<E: de::Error>(self, index: u64) -> Result<Variant, E> {
        usize::try_from(index)
            .ok()
            .filter(|i| *i < REGISTRY.len())
            .map(|i| Variant(Provider(i)))
            .ok_or_else(|| {
                let expected = format!("variant index 0 <= i < {}", REGISTRY.len());
                E::invalid_value(Unexpected::Unsigned(index), &expected.as_str())
            })
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Variant, E> {
        by_name(name)
            .map(Variant)
            .ok_or_else(|| E::unknown_variant(name, names()))
    }

    fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<Variant, E> {
        match std::str::from_utf8(name) {
            Ok(name) => self.visit_str(name),
            Err(_) => Err(E::unknown_variant(&String::from_utf8_lossy(name), names())),
        }
    }
}

#[cfg(test)]
#[path = "provider_tests.rs"]
mod tests;
