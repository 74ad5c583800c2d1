#![cfg(unix)]
#![allow(clippy::unwrap_used)]

//! The data directory holds the databases and the backend's client secret: only its owner can
//! read any of it, even when it, or the credentials file, existed before with looser
//! permissions.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use tollgate::{
    credentials::{Credentials, FILE_NAME},
    stack::{Options, Stack},
};
use tollgate_shared::shutdown::Shutdown;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file in the directory (databases, their -wal and -shm files, credentials) is the
/// owner's alone; returns their names.
fn assert_private_files(data: &Path) -> Vec<String> {
    let files: Vec<_> = fs::read_dir(data)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    files
        .iter()
        .map(|file| file.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private_to_their_owner() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    // Left behind world-readable, and the credentials file a link to a file elsewhere.
    fs::create_dir(&data).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    let elsewhere = root.path().join("elsewhere.env");
    fs::write(&elsewhere, "unrelated\n").unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, data.join(FILE_NAME)).unwrap();

    let stack = Stack::start(Options::ephemeral(&data), Shutdown::new())
        .await
        .unwrap();
    let secret = stack.backend_secret().to_owned();
    assert_eq!(mode(&data), 0o700);
    let credentials = data.join(FILE_NAME);
    assert!(fs::symlink_metadata(&credentials).unwrap().is_file());
    assert_eq!(mode(&credentials), 0o600);
    assert_eq!(
        Credentials::read_backend_secret(&data).as_deref(),
        Some(secret.as_str())
    );
    assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "unrelated\n");
    let running = assert_private_files(&data);
    for database in ["auth.db", "auth.db-wal", "usage.db", "usage.db-wal"] {
        assert!(running.iter().any(|file| file == database), "{running:?}");
    }
    stack.stop().await.unwrap();
    assert_private_files(&data);

    // A second start over an existing, loosened credentials file restricts it again.
    fs::set_permissions(&credentials, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(data.join("auth.db"), fs::Permissions::from_mode(0o644)).unwrap();
    let stack = Stack::start(Options::ephemeral(&data), Shutdown::new())
        .await
        .unwrap();
    assert_eq!(mode(&credentials), 0o600);
    assert_eq!(mode(&data.join("auth.db")), 0o600);
    assert_ne!(stack.backend_secret(), secret);
    stack.stop().await.unwrap();
}
