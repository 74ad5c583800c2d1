//! The embedded stack's key-encryption key, which seals auth-service's signing keys in
//! `auth.db` (see `auth_service::sealing`).
//!
//! `cargo run` must work with no setup and keep working across restarts, so the stack creates
//! a random key in its data directory on first start (`key-encryption-keys`, readable only by
//! its owner) and reuses it afterwards. A copy of the database alone then signs nothing. An
//! `AUTH_KEY_ENCRYPTION_KEYS` set in the environment wins, and the file is left alone.

use std::{
    io::{ErrorKind, Write},
    path::Path,
};

use anyhow::Context as _;
use auth_service::sealing::KeyEncryptionKeys;
use zeroize::Zeroizing;

pub const FILE_NAME: &str = "key-encryption-keys";

/// The keyring in `data_dir`, created there if it is not yet.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<KeyEncryptionKeys> {
    let path = data_dir.join(FILE_NAME);
    if !path.exists() {
        create(data_dir)?;
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(&path)
            .with_context(|| format!("TOLLGATE_DATA_DIR: cannot read {path:?}"))?,
    );
    KeyEncryptionKeys::parse(text.trim())
        .map_err(|err| anyhow::anyhow!("TOLLGATE_DATA_DIR: {path:?}: {err}"))
}

/// Writes a fresh key to a temporary file and links it into place, so a stack starting at the
/// same moment either creates the file whole or finds it whole.
fn create(data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join(FILE_NAME);
    let partial = data_dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&partial).and_then(|mut file| {
        writeln!(file, "{}", KeyEncryptionKeys::generate_encoded().as_str())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| match std::fs::hard_link(&partial, &path) {
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = std::fs::remove_file(&partial);
    linked.with_context(|| format!("TOLLGATE_DATA_DIR: cannot write {path:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_key_is_created_once_for_its_owner_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.newest(), again.newest());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let entries = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(entries, 1, "no partial file is left behind");
    }

    #[test]
    fn another_data_directory_gets_another_key() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        assert_ne!(
            load_or_create(one.path()).unwrap().newest(),
            load_or_create(two.path()).unwrap().newest()
        );
    }
}
