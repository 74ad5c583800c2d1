//! The data directory holds the embedded databases (users, password hashes, signing keys, the
//! usage ledger) and the backend's client secret, so only its owner may read any of it: the
//! directory is 0700 and every file in it the stack owns is 0600, whatever was there before.

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

/// Creates the directory (or restricts an existing one) and the SQLite files the services will
/// open, so that they never exist with the default umask's permissions. SQLite creates a
/// database's `-wal` and `-shm` files with the database file's own permissions; existing ones
/// are restricted too.
pub fn prepare(dir: &Path, databases: &[&str]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    restrict(dir, 0o700)?;
    for database in databases {
        let path = dir.join(database);
        private_file_options().append(true).open(&path)?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            match restrict(&file, 0o600) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                result => result?,
            }
        }
    }
    Ok(())
}

/// Writes `contents` to `dir/name` readable by its owner only. The file is written next to its
/// destination and renamed over it, so a file (or symbolic link) of that name that existed
/// before is replaced, never written through, and readers never see half of it.
pub fn write_private(dir: &Path, name: &str, contents: &str) -> io::Result<PathBuf> {
    let path = dir.join(name);
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = private_file_options().create_new(true).open(&temporary)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written.map(|()| path)
}

/// Write access, creating the file 0600.
fn private_file_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(path: &Path, _mode: u32) -> io::Result<()> {
    fs::metadata(path).map(drop)
}
