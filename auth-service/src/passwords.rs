//! Argon2id password hashing with the OWASP parameters (19 MiB, 2 passes, 1 lane).
//!
//! Hashing runs on the blocking pool, at most `parallelism` at a time so a login flood cannot
//! exhaust memory, and inside the caller's span. Unknown emails are checked against a dummy
//! hash so that "no such user" costs the same time as "wrong password".

use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};
use tokio::sync::Semaphore;
use tracing::Span;

use crate::domain::Password;

#[derive(Clone, Debug)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    dummy_hash: Arc<str>,
}

/// The OWASP Password Storage Cheat Sheet's first argon2id configuration.
pub fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("static argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl Passwords {
    pub async fn new(parallelism: usize) -> anyhow::Result<Self> {
        let dummy =
            Password::for_login(uuid::Uuid::new_v4().to_string()).map_err(anyhow::Error::msg)?;
        let dummy_hash = tokio::task::spawn_blocking(move || hash_now(&dummy)).await??;
        Ok(Self {
            permits: Arc::new(Semaphore::new(parallelism.max(1))),
            dummy_hash: dummy_hash.into(),
        })
    }

    pub async fn hash(&self, password: Password) -> anyhow::Result<String> {
        self.blocking(move || hash_now(&password)).await?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when there is no user,
    /// in which case the answer is always false.
    pub async fn verify(&self, password: Password, stored: Option<String>) -> anyhow::Result<bool> {
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .blocking(move || {
                PasswordHash::new(&hash)
                    .map(|parsed| {
                        argon2()
                            .verify_password(password.expose().as_bytes(), &parsed)
                            .is_ok()
                    })
                    .unwrap_or(false)
            })
            .await?;
        Ok(exists && matches)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self.permits.acquire().await?;
        let span = Span::current();
        Ok(tokio::task::spawn_blocking(move || span.in_scope(work)).await?)
    }
}

fn hash_now(password: &Password) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Ok(argon2()
        .hash_password(password.expose().as_bytes(), &salt)
        .map_err(|err| anyhow::anyhow!("hashing failed: {err}"))?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() {
        let passwords = Passwords::new(2).await.unwrap();
        let password = Password::parse("correct horse battery".into()).unwrap();
        let hash = passwords.hash(password.clone()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            passwords
                .verify(password.clone(), Some(hash.clone()))
                .await
                .unwrap()
        );
        let wrong = Password::for_login("wrong horse battery".into()).unwrap();
        assert!(!passwords.verify(wrong, Some(hash)).await.unwrap());
        assert!(!passwords.verify(password, None).await.unwrap());
    }
}
