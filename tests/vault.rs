//! The credential vault through the real binary: `vault rotate-key` killed part-way leaves every
//! credential readable under the old or the new key, and a rerun finishes the job; a malformed
//! key is refused without being echoed; and the state file never holds a token in clear.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use master_controller::auth::vault::{MasterKey, ROTATE_FAILPOINT, Vault, VaultError};
use master_controller::model::tables;
use master_controller::model::{Credential, credential_key};
use master_controller::providers;
use master_controller::store::{self, Store, StoreError};

const KEY_A: &str = "6b3a55e0261b0304143f805a24924d0c1c44524821305f31d9277843b8a10f4e";
const KEY_B: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const RECORDS: usize = 20;
const DIE_AT: usize = 5;

fn token(i: usize) -> String {
    format!("oauth-refresh-token-{i:03}-do-not-leak")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// A state directory with `RECORDS` credentials sealed under `KEY_A`; the store is closed on
/// return so the binary can open it.
fn seeded_state() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_blocking(dir.path()).unwrap();
    let vault = Vault::open(&store, &MasterKey::parse(KEY_A).unwrap()).unwrap();
    let credentials: Vec<Credential> = (0..RECORDS)
        .map(|i| {
            let sealed = vault.seal(token(i).as_bytes()).unwrap();
            Credential {
                id: format!("cred-{i}"),
                user_id: format!("user-{i:03}"),
                provider: providers::CODEX,
                ciphertext: sealed.ciphertext,
                key_id: sealed.key_id,
                is_valid: true,
                reason: None,
                expires_at_ms: None,
                last_verified_ms: None,
                created_at_ms: 1,
                updated_at_ms: 1,
                version: 1,
            }
        })
        .collect();
    runtime()
        .block_on(store.write(move |tx| {
            let mut table = tx.open_table(tables::CREDENTIALS)?;
            for credential in &credentials {
                let key = credential_key(&credential.user_id, credential.provider);
                store::put(&mut table, &key, credential)?;
            }
            Ok::<_, StoreError>(())
        }))
        .unwrap();
    dir
}

fn credentials(store: &Store) -> Vec<Credential> {
    runtime()
        .block_on(
            store.read(|tx| store::all::<Credential, _>(&tx.open_table(tables::CREDENTIALS)?)),
        )
        .unwrap()
}

fn token_index(credential: &Credential) -> usize {
    credential.user_id["user-".len()..].parse().unwrap()
}

fn rotate_key(dir: &Path, old_key: &str, failpoint: Option<&str>) -> Output {
    let new_key_file = dir.join("new-key");
    std::fs::write(&new_key_file, format!("{KEY_B}\n")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_master-controller"));
    command
        .args(["vault", "rotate-key", "--data-dir"])
        .arg(dir)
        .arg("--new-key-file")
        .arg(&new_key_file)
        .env_clear()
        // Not the host's installation, if it has one (its config, env and credentials).
        .env("MC_INSTALL_ROOT", dir)
        .env("ENCRYPTION_MASTER_KEY", old_key);
    if let Some(failpoint) = failpoint {
        command.env("MC_FAILPOINT", failpoint);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_rotation_killed_part_way_is_finished_by_a_rerun() {
    let dir = seeded_state();
    let killed = rotate_key(
        dir.path(),
        KEY_A,
        Some(&format!("{ROTATE_FAILPOINT}@{DIE_AT}")),
    );
    assert_eq!(
        killed.status.signal(),
        Some(nix::sys::signal::Signal::SIGKILL as i32),
        "stderr: {}",
        text(&killed.stderr)
    );

    {
        let store = Store::open_blocking(dir.path()).unwrap();
        let old = Vault::open(&store, &MasterKey::parse(KEY_A).unwrap())
            .expect("the old key still opens the vault until the rotation finishes");
        let moved: Vec<Credential> = credentials(&store)
            .into_iter()
            .filter(|c| c.key_id != old.key_id())
            .collect();
        let new = Vault::open_key(&store, &MasterKey::parse(KEY_B).unwrap(), &moved[0].key_id)
            .expect("the records moved so far are under the new key's pending key");
        let (mut under_old, mut under_new) = (0, 0);
        for credential in credentials(&store) {
            let vault = if credential.key_id == old.key_id() {
                under_old += 1;
                &old
            } else {
                under_new += 1;
                &new
            };
            let plaintext = vault
                .unseal(&credential.key_id, &credential.ciphertext)
                .unwrap();
            assert_eq!(&plaintext[..], token(token_index(&credential)).as_bytes());
        }
        assert_eq!((under_old, under_new), (RECORDS - DIE_AT, DIE_AT));
        assert_eq!(old.foreign_records(&store).unwrap(), DIE_AT);
    }

    let finished = rotate_key(dir.path(), KEY_A, None);
    let (stdout, stderr) = (text(&finished.stdout), text(&finished.stderr));
    assert!(
        finished.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains(&format!(
            "{} credentials re-encrypted, {DIE_AT} already under the new key",
            RECORDS - DIE_AT
        )),
        "{stdout}"
    );
    assert!(stdout.contains("ENCRYPTION_MASTER_KEY"), "{stdout}");
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains(KEY_A) && !output.contains(KEY_B),
            "{output}"
        );
    }

    let store = Store::open_blocking(dir.path()).unwrap();
    let new = Vault::open(&store, &MasterKey::parse(KEY_B).unwrap()).unwrap();
    for credential in credentials(&store) {
        assert_eq!(credential.key_id, new.key_id());
        let plaintext = new
            .unseal(&credential.key_id, &credential.ciphertext)
            .unwrap();
        assert_eq!(&plaintext[..], token(token_index(&credential)).as_bytes());
    }
    assert!(matches!(
        Vault::open(&store, &MasterKey::parse(KEY_A).unwrap()),
        Err(VaultError::WrongMasterKey { .. })
    ));
}

#[test]
fn a_malformed_master_key_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let short = "deadbeef-not-a-key";
    let not_hex = format!("{}xyz", &KEY_A[..61]);
    for (bad, problem) in [
        (short, "18 characters, not 64"),
        (not_hex.as_str(), "not hex digits"),
    ] {
        let output = rotate_key(dir.path(), bad, None);
        let stderr = text(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains("master key is malformed"), "{stderr}");
        assert!(stderr.contains(problem), "{stderr}");
        assert!(!stderr.contains(bad) && !text(&output.stdout).contains(bad));
    }
}

#[test]
fn the_daemon_must_be_stopped_first() {
    let dir = seeded_state();
    let _held = Store::open_blocking(dir.path()).unwrap();
    let output = rotate_key(dir.path(), KEY_A, None);
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("already open") && stderr.contains("stop the daemon first"),
        "{stderr}"
    );
}

#[test]
fn the_state_file_holds_no_token_in_clear() {
    let dir = seeded_state();
    let raw = std::fs::read(dir.path().join(Store::FILE_NAME)).unwrap();
    for i in 0..RECORDS {
        let needle = token(i);
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "token {i} is in the state file in clear"
        );
    }
    let fragment = b"do-not-leak";
    assert!(
        !raw.windows(fragment.len()).any(|w| w == fragment),
        "a token fragment is in the state file"
    );
}

/// `serve` with `key`: it must refuse to start, before it listens.
fn serve_with_key(dir: &Path, key: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_master-controller"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .env_clear()
        .env("MC_ADMIN_TOKEN", "admin-token-for-the-vault-test")
        .env("MC_LISTEN", "127.0.0.1:0")
        .env("ENCRYPTION_MASTER_KEY", key)
        .output()
        .unwrap()
}

#[test]
fn serve_refuses_a_malformed_or_mismatched_master_key() {
    let dir = seeded_state();
    let malformed = "0123456789abcdef";
    let output = serve_with_key(dir.path(), malformed);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("master key is malformed"), "{stderr}");
    assert!(!stderr.contains(malformed), "{stderr}");

    // Well-formed, but not the key the vault was made with.
    let output = serve_with_key(dir.path(), KEY_B);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(
        !stderr.contains(KEY_B) && !stderr.contains(KEY_A),
        "{stderr}"
    );
}
