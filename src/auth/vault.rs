//! The credential vault: credentials are sealed with age to an X25519 identity derived by
//! scrypt from the operator's master key and a stored salt. The master key never touches the
//! disk; the salt and a key id (a hash of the public half) do, so a wrong master key is caught
//! at start instead of on the first decryption.
//!
//! Rotation re-seals every credential under a new master key in small transactions, recording
//! the new salt first as a `Pending` key, so a crash at any point leaves a state that opens with
//! the old key and that a rerun finishes.

use std::fmt;
use std::io::Read;
use std::sync::Arc;

use age::x25519;
use bech32::{Bech32Writer, ToBase32, Variant};
use redb::ReadableTable;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::model::tables;
use crate::model::{Credential, VaultKey, VaultKeyState, now_ms};
use crate::store::{self, Store, StoreError};
mod rotate;

pub use rotate::{ROTATE_FAILPOINT, RotateReport, rotate};

/// About 100 ms and 32 MiB per derivation on a server core: paid once at start, and expensive
/// enough to slow guessing of a weak master key should the state file leak.
const SCRYPT_LOG_N: u8 = 15;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;
const SALT_LEN: usize = 16;
const KEY_ID_HEX_LEN: usize = 16;
const AGE_SECRET_KEY_HRP: &str = "age-secret-key-";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "no encryption master key: set ENCRYPTION_MASTER_KEY or the systemd credential `encryption-master-key` to 64 hex digits (make one with `openssl rand -hex 32`)"
    )]
    MissingMasterKey,
    #[error(
        "the encryption master key is malformed: {reason}; it must be 64 hex digits (make one with `openssl rand -hex 32`)"
    )]
    BadMasterKey { reason: String },
    #[error(
        "the master key does not match vault key {key_id}: the credentials were sealed with a different ENCRYPTION_MASTER_KEY (after an interrupted `master-controller vault rotate-key`, rerun it with the same old and new keys)"
    )]
    WrongMasterKey { key_id: String },
    #[error(
        "the credential is sealed under vault key {key_id}, not the vault's key; finish `master-controller vault rotate-key`"
    )]
    OtherKey { key_id: String },
    #[error(
        "credential {record} is sealed under vault key {key_id}, which is neither the old nor the new key of this rotation"
    )]
    Stranded { record: String, key_id: String },
    #[error("the credential cannot be decrypted: its ciphertext is corrupt or was altered")]
    Decrypt,
    #[error("credential {record} cannot be decrypted: its ciphertext is corrupt or was altered")]
    Corrupt { record: String },
    #[error("cannot encrypt the credential: {0}")]
    Encrypt(String),
    #[error("cannot derive the vault key: {0}")]
    Derive(String),
    #[error(
        "the state file holds {count} {state} vault keys where at most one is allowed; it is inconsistent"
    )]
    Inconsistent { state: VaultKeyState, count: usize },
    #[error("vault key {key_id} is missing from the state file; it is inconsistent")]
    MissingKey { key_id: String },
    #[error("cannot run the store's transactions: {0}")]
    Runtime(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::lift_redb_errors!(VaultError);

/// The operator's 32-byte master key. Zeroized on drop; its Debug output is redacted so that a
/// derived Debug on a containing struct cannot leak it.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// 64 hex digits, with surrounding whitespace allowed (files end in a newline). Errors
    /// describe the shape only, never the value.
    pub fn parse(text: &str) -> Result<MasterKey, VaultError> {
        let text = text.trim();
        let chars = text.chars().count();
        if chars != 64 {
            return Err(VaultError::BadMasterKey {
                reason: format!("it has {chars} characters, not 64"),
            });
        }
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(VaultError::BadMasterKey {
                reason: "it contains characters that are not hex digits (0-9, a-f)".into(),
            });
        }
        let mut key = Zeroizing::new([0u8; 32]);
        for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(MasterKey(key))
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// The master key from the configuration, which already merged ENCRYPTION_MASTER_KEY and the
/// systemd credential.
pub fn load_master_key(config_value: Option<&SecretString>) -> Result<MasterKey, VaultError> {
    let value = config_value.ok_or(VaultError::MissingMasterKey)?;
    MasterKey::parse(value.expose_secret())
}

/// A ciphertext and the key that sealed it, as a credential record stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub ciphertext: Vec<u8>,
}

/// An open vault: the derived identity of the active key. Cheap to clone.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Derived>,
}

struct Derived {
    identity: x25519::Identity,
    recipient: x25519::Recipient,
    key_id: String,
    salt: Vec<u8>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("key_id", &self.inner.key_id)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Derives the active key's identity, creating the active key on first use. Blocking (scrypt
    /// and the store): call it from a blocking thread or outside any runtime, never from an async
    /// worker, where tokio refuses to block.
    pub fn open(store: &Store, master: &MasterKey) -> Result<Vault, VaultError> {
        Vault::open_with(&Driver::new()?, store, master)
    }

    fn open_with(driver: &Driver, store: &Store, master: &MasterKey) -> Result<Vault, VaultError> {
        let key = match find_key(driver, store, VaultKeyState::Active)? {
            Some(key) => key,
            None => {
                let derived = derive(master, &random_salt()?)?;
                match insert_key(driver, store, &derived, VaultKeyState::Active)? {
                    None => return Ok(Vault::from(derived)),
                    // Another opener won the race; its key is the one to match.
                    Some(existing) => existing,
                }
            }
        };
        verify(master, &key).map(Vault::from)
    }

    /// The identity of one recorded key, whatever its state: the records an interrupted rotation
    /// already moved are readable with the new master key through its pending key. Blocking.
    pub fn open_key(store: &Store, master: &MasterKey, key_id: &str) -> Result<Vault, VaultError> {
        let wanted = key_id.to_string();
        let key = Driver::new()?
            .run(store.read(move |tx| {
                store::get::<VaultKey, _>(&tx.open_table(tables::VAULT_KEYS)?, &wanted)
            }))?
            .ok_or_else(|| VaultError::MissingKey {
                key_id: key_id.to_string(),
            })?;
        verify(master, &key).map(Vault::from)
    }

    pub fn key_id(&self) -> &str {
        &self.inner.key_id
    }

    pub fn seal(&self, plaintext: &[u8]) -> Result<Sealed, VaultError> {
        let ciphertext = age::encrypt(&self.inner.recipient, plaintext)
            .map_err(|e| VaultError::Encrypt(e.to_string()))?;
        Ok(Sealed {
            key_id: self.inner.key_id.clone(),
            ciphertext,
        })
    }

    /// The plaintext, zeroized when dropped. age's own errors are not passed on: they would only
    /// tell an attacker which part of a forged ciphertext failed.
    pub fn unseal(
        &self,
        key_id: &str,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if key_id != self.inner.key_id {
            return Err(VaultError::OtherKey {
                key_id: key_id.to_string(),
            });
        }
        let decryptor =
            age::Decryptor::new_buffered(ciphertext).map_err(|_| VaultError::Decrypt)?;
        let identity: &dyn age::Identity = &self.inner.identity;
        let mut reader = decryptor
            .decrypt(std::iter::once(identity))
            .map_err(|_| VaultError::Decrypt)?;
        // The plaintext is shorter than its ciphertext, so this buffer never reallocates and
        // leaves no unzeroized copy behind.
        let mut plaintext = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
        reader
            .read_to_end(&mut plaintext)
            .map_err(|_| VaultError::Decrypt)?;
        Ok(plaintext)
    }

    /// Credentials sealed under any other key, which an interrupted rotation leaves behind.
    /// Blocking, like `open`.
    pub fn foreign_records(&self, store: &Store) -> Result<usize, VaultError> {
        let key_id = self.inner.key_id.clone();
        let records = sealed_by(&Driver::new()?, store)?;
        Ok(records.iter().filter(|(_, id)| *id != key_id).count())
    }
}

impl From<Derived> for Vault {
    fn from(derived: Derived) -> Vault {
        Vault {
            inner: Arc::new(derived),
        }
    }
}

/// Every credential's record key and the key id that sealed it.
fn sealed_by(driver: &Driver, store: &Store) -> Result<Vec<(String, String)>, VaultError> {
    driver.run(store.read(|tx| {
        let table = tx.open_table(tables::CREDENTIALS)?;
        credential_key_ids(&table)
    }))
}

fn credential_key_ids<T>(table: &T) -> Result<Vec<(String, String)>, VaultError>
where
    T: ReadableTable<&'static str, store::Stored<Credential>>,
{
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let credential: Credential = value.value().decode()?;
        out.push((key.value().to_string(), credential.key_id));
    }
    Ok(out)
}

/// The one key in `state`, if any.
fn find_key(
    driver: &Driver,
    store: &Store,
    state: VaultKeyState,
) -> Result<Option<VaultKey>, VaultError> {
    driver.run(store.read(move |tx| {
        let table = tx.open_table(tables::VAULT_KEYS)?;
        let mut keys: Vec<VaultKey> = store::all(&table)?;
        keys.retain(|key| key.state == state);
        if keys.len() > 1 {
            return Err(VaultError::Inconsistent {
                state,
                count: keys.len(),
            });
        }
        Ok(keys.pop())
    }))
}

/// Records `derived` as the key in `state` unless one already exists, which is returned instead.
fn insert_key(
    driver: &Driver,
    store: &Store,
    derived: &Derived,
    state: VaultKeyState,
) -> Result<Option<VaultKey>, VaultError> {
    let key = VaultKey {
        key_id: derived.key_id.clone(),
        salt: derived.salt.clone(),
        state,
        created_at_ms: now_ms(),
    };
    driver.run(store.write(move |tx| {
        let mut table = tx.open_table(tables::VAULT_KEYS)?;
        let mut existing: Vec<VaultKey> = store::all(&table)?;
        existing.retain(|other| other.state == state);
        if let Some(other) = existing.pop() {
            return Ok(Some(other));
        }
        store::put(&mut table, &key.key_id, &key)?;
        Ok(None)
    }))
}

fn random_salt() -> Result<Vec<u8>, VaultError> {
    let mut salt = vec![0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| VaultError::Derive(e.to_string()))?;
    Ok(salt)
}

/// Derives `key`'s identity from `master` and checks it is the one the key recorded.
fn verify(master: &MasterKey, key: &VaultKey) -> Result<Derived, VaultError> {
    let derived = derive(master, &key.salt)?;
    if derived.key_id != key.key_id {
        return Err(VaultError::WrongMasterKey {
            key_id: key.key_id.clone(),
        });
    }
    Ok(derived)
}

fn derive(master: &MasterKey, salt: &[u8]) -> Result<Derived, VaultError> {
    let params = scrypt::Params::new(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, 32)
        .map_err(|e| VaultError::Derive(e.to_string()))?;
    let mut secret = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(&master.0[..], salt, &params, &mut secret[..])
        .map_err(|e| VaultError::Derive(e.to_string()))?;
    // age builds an identity only from its bech32 text; the text is written straight into a
    // zeroizing buffer sized so that it never reallocates.
    let mut text = Zeroizing::new(String::with_capacity(96));
    let encoded = Bech32Writer::new(AGE_SECRET_KEY_HRP, Variant::Bech32, &mut *text).and_then(
        |mut writer| {
            secret.write_base32(&mut writer)?;
            writer.finalize()
        },
    );
    encoded.map_err(|_| VaultError::Derive("cannot encode the age identity".into()))?;
    let identity: x25519::Identity = text
        .parse()
        .map_err(|e: &str| VaultError::Derive(e.to_string()))?;
    let recipient = identity.to_public();
    let digest = Sha256::digest(recipient.to_string().as_bytes());
    let mut key_id: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    key_id.truncate(KEY_ID_HEX_LEN);
    Ok(Derived {
        identity,
        recipient,
        key_id,
        salt: salt.to_vec(),
    })
}

/// The store's transactions are async (each hops to a blocking thread) while the vault is
/// blocking, because scrypt is. Inside a runtime's blocking thread the caller's runtime drives
/// them; from plain threads (the CLI, unit tests) a small private one does.
enum Driver {
    Caller(tokio::runtime::Handle),
    Own(tokio::runtime::Runtime),
}

impl Driver {
    fn new() -> Result<Driver, VaultError> {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            return Ok(Driver::Caller(handle));
        }
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map(Driver::Own)
            .map_err(|e| VaultError::Runtime(e.to_string()))
    }

    fn run<F: std::future::Future>(&self, future: F) -> F::Output {
        match self {
            Driver::Caller(handle) => handle.block_on(future),
            Driver::Own(runtime) => runtime.block_on(future),
        }
    }
}

#[cfg(test)]
#[path = "vault_tests.rs"]
mod tests;
