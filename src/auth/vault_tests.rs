use super::rotate::{pending_key, reseal};
use super::*;
use crate::model::credential_key;
use crate::providers::CLAUDE_CODE;

const KEY_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const KEY_C: &str = "0f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a6978";

fn key(hex: &str) -> MasterKey {
    MasterKey::parse(hex).unwrap()
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_blocking(dir.path()).unwrap();
    (dir, store)
}

fn token(i: usize) -> String {
    format!("{{\"access_token\":\"sk-secret-token-{i:04}\"}}")
}

/// Writes `n` credentials sealed by `vault`, one per user, and returns their record keys.
fn seed(store: &Store, vault: &Vault, n: usize) -> Vec<String> {
    let driver = Driver::new().unwrap();
    (0..n)
        .map(|i| {
            let sealed = vault.seal(token(i).as_bytes()).unwrap();
            let user = format!("user-{i:04}");
            let record_key = credential_key(&user, CLAUDE_CODE);
            let credential = Credential {
                id: format!("cred-{i}"),
                user_id: user,
                provider: CLAUDE_CODE,
                ciphertext: sealed.ciphertext,
                key_id: sealed.key_id,
                is_valid: true,
                reason: None,
                expires_at_ms: None,
                last_verified_ms: None,
                created_at_ms: 1,
                updated_at_ms: 1,
                version: 1,
            };
            let k = record_key.clone();
            driver
                .run(store.write(move |tx| {
                    let mut table = tx.open_table(tables::CREDENTIALS)?;
                    store::put(&mut table, &k, &credential)?;
                    Ok::<_, VaultError>(())
                }))
                .unwrap();
            record_key
        })
        .collect()
}

/// Unseals every credential with `vault`, checking each plaintext against its seed.
fn assert_all_unseal(store: &Store, vault: &Vault) {
    let driver = Driver::new().unwrap();
    let all = driver
        .run(store.read(|tx| store::all::<Credential, _>(&tx.open_table(tables::CREDENTIALS)?)))
        .unwrap();
    for credential in all {
        let i: usize = credential.user_id["user-".len()..].parse().unwrap();
        let plaintext = vault
            .unseal(&credential.key_id, &credential.ciphertext)
            .unwrap();
        assert_eq!(&plaintext[..], token(i).as_bytes());
    }
}

#[test]
fn round_trips_and_reopens_with_the_same_key() {
    let (_dir, store) = store();
    let vault = Vault::open(&store, &key(KEY_A)).unwrap();
    assert_eq!(vault.key_id().len(), 16);
    assert!(vault.key_id().bytes().all(|b| b.is_ascii_hexdigit()));
    let sealed = vault.seal(b"the secret token").unwrap();
    assert_eq!(sealed.key_id, vault.key_id());
    assert!(!sealed.ciphertext.windows(6).any(|w| w == b"secret"));
    let plaintext = vault.unseal(&sealed.key_id, &sealed.ciphertext).unwrap();
    assert_eq!(&plaintext[..], b"the secret token");

    let again = Vault::open(&store, &key(KEY_A)).unwrap();
    assert_eq!(again.key_id(), vault.key_id());
    assert_eq!(
        &again.unseal(&sealed.key_id, &sealed.ciphertext).unwrap()[..],
        b"the secret token"
    );
    assert_eq!(vault.foreign_records(&store).unwrap(), 0);
}

#[test]
fn a_wrong_master_key_is_refused_with_a_clear_message() {
    let (_dir, store) = store();
    let vault = Vault::open(&store, &key(KEY_A)).unwrap();
    let err = Vault::open(&store, &key(KEY_B)).unwrap_err();
    match &err {
        VaultError::WrongMasterKey { key_id } => assert_eq!(key_id, vault.key_id()),
        other => panic!("unexpected {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("does not match vault key"), "{message}");
    assert!(message.contains(vault.key_id()), "{message}");
    assert!(!message.contains(KEY_B) && !message.contains(KEY_A));
}

#[test]
fn tampered_or_foreign_ciphertexts_are_rejected() {
    let (_dir, store) = store();
    let vault = Vault::open(&store, &key(KEY_A)).unwrap();
    let sealed = vault.seal(b"the secret token").unwrap();
    // The header's MAC, the stanza and the payload's last chunk each fail their own way.
    for at in [20, sealed.ciphertext.len() / 2, sealed.ciphertext.len() - 1] {
        let mut forged = sealed.ciphertext.clone();
        forged[at] ^= 0x01;
        let err = vault.unseal(&sealed.key_id, &forged).unwrap_err();
        assert!(matches!(err, VaultError::Decrypt), "byte {at}: {err}");
        assert!(!err.to_string().contains("secret"));
    }
    let truncated = &sealed.ciphertext[..sealed.ciphertext.len() - 4];
    assert!(matches!(
        vault.unseal(&sealed.key_id, truncated),
        Err(VaultError::Decrypt)
    ));
    assert!(matches!(
        vault.unseal("0123456789abcdef", &sealed.ciphertext),
        Err(VaultError::OtherKey { key_id }) if key_id == "0123456789abcdef"
    ));
}

#[test]
fn master_keys_parse_only_as_64_hex_digits() {
    assert!(MasterKey::parse(&format!("  {}\n", KEY_A.to_uppercase())).is_ok());
    let short = MasterKey::parse("abcd1234").unwrap_err();
    assert!(matches!(short, VaultError::BadMasterKey { .. }));
    let message = short.to_string();
    assert!(message.contains("8 characters, not 64"), "{message}");
    assert!(message.contains("openssl rand -hex 32"), "{message}");
    assert!(!message.contains("abcd1234"));

    let not_hex = format!("{}zz", &KEY_A[..62]);
    let message = MasterKey::parse(&not_hex).unwrap_err().to_string();
    assert!(message.contains("not hex digits"), "{message}");
    assert!(!message.contains(&not_hex[..20]));

    let missing = load_master_key(None).unwrap_err();
    assert!(matches!(missing, VaultError::MissingMasterKey));
    let message = missing.to_string();
    assert!(message.contains("ENCRYPTION_MASTER_KEY") && message.contains("encryption-master-key"));
    let configured = SecretString::from(KEY_A.to_string());
    assert!(load_master_key(Some(&configured)).is_ok());
    assert_eq!(format!("{:?}", key(KEY_A)), "MasterKey([redacted])");
}

#[test]
fn rotation_moves_every_record_to_the_new_key() {
    let (_dir, store) = store();
    let old = Vault::open(&store, &key(KEY_A)).unwrap();
    seed(&store, &old, 5);
    let report = rotate(&store, &key(KEY_A), &key(KEY_B)).unwrap();
    assert_eq!((report.re_encrypted, report.already_done), (5, 0));
    assert_eq!(report.key_id_old, old.key_id());
    assert_ne!(report.key_id_new, report.key_id_old);

    assert!(matches!(
        Vault::open(&store, &key(KEY_A)),
        Err(VaultError::WrongMasterKey { .. })
    ));
    let new = Vault::open(&store, &key(KEY_B)).unwrap();
    assert_eq!(new.key_id(), report.key_id_new);
    assert_eq!(new.foreign_records(&store).unwrap(), 0);
    assert_all_unseal(&store, &new);

    // A rerun after the last step (the CLI died before printing) reports the job as done, but
    // only for the right old key.
    let rerun = rotate(&store, &key(KEY_A), &key(KEY_B)).unwrap();
    assert_eq!((rerun.re_encrypted, rerun.already_done), (0, 5));
    assert_eq!(rerun.key_id_old, report.key_id_old);
    assert!(matches!(
        rotate(&store, &key(KEY_C), &key(KEY_B)),
        Err(VaultError::WrongMasterKey { .. })
    ));
}

#[test]
fn an_interrupted_rotation_still_opens_with_the_old_key_and_finishes() {
    let (_dir, store) = store();
    let old = Vault::open(&store, &key(KEY_A)).unwrap();
    let records = seed(&store, &old, 6);
    let driver = Driver::new().unwrap();
    let new = Vault::from(pending_key(&driver, &store, &key(KEY_B)).unwrap());
    for record in &records[..3] {
        let (record, old, new) = (record.clone(), old.clone(), new.clone());
        assert!(
            driver
                .run(store.write(move |tx| reseal(tx, &record, &old, &new)))
                .unwrap()
        );
    }

    let reopened = Vault::open(&store, &key(KEY_A)).unwrap();
    assert_eq!(reopened.foreign_records(&store).unwrap(), 3);
    assert!(matches!(
        Vault::open(&store, &key(KEY_B)),
        Err(VaultError::WrongMasterKey { .. })
    ));
    // Records already re-sealed pin the pending key: another new key is refused.
    let other = rotate(&store, &key(KEY_A), &key(KEY_C)).unwrap_err();
    assert!(
        matches!(&other, VaultError::WrongMasterKey { key_id } if key_id == new.key_id()),
        "{other}"
    );

    let report = rotate(&store, &key(KEY_A), &key(KEY_B)).unwrap();
    assert_eq!((report.re_encrypted, report.already_done), (3, 3));
    assert_eq!(report.key_id_new, new.key_id());
    let finished = Vault::open(&store, &key(KEY_B)).unwrap();
    assert_all_unseal(&store, &finished);
}

#[test]
fn an_unused_pending_key_gives_way_to_another_new_key() {
    let (_dir, store) = store();
    let old = Vault::open(&store, &key(KEY_A)).unwrap();
    seed(&store, &old, 2);
    pending_key(&Driver::new().unwrap(), &store, &key(KEY_B)).unwrap();
    let report = rotate(&store, &key(KEY_A), &key(KEY_C)).unwrap();
    assert_eq!(report.re_encrypted, 2);
    assert_all_unseal(&store, &Vault::open(&store, &key(KEY_C)).unwrap());
}

/// The daemon opens the vault from a blocking thread of its runtime.
#[tokio::test]
async fn opens_from_a_blocking_thread_of_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let vault = tokio::task::spawn_blocking(move || Vault::open(&store, &key(KEY_A)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(format!("{vault:?}").matches(vault.key_id()).count(), 1);
}
