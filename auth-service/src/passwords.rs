//! Argon2id password hashing with the OWASP parameters (19 MiB, 2 passes, 1 lane).
//!
//! Hashing runs on a fixed set of `parallelism` threads fed by a bounded queue: a login flood
//! queues (and is throttled) instead of exhausting memory, and a thread starts the next hash the
//! moment one ends, so the cores stay busy with hashing rather than with hand-overs. Each thread
//! checks passwords in working memory of its own (see [`memory`]). Each hash runs inside its
//! caller's span. Unknown emails are checked against a dummy hash so that "no such user" costs
//! the same time as "wrong password".

mod memory;

use std::sync::{Arc, Mutex};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, Version, password_hash::SaltString,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Span;

use crate::domain::Password;

pub use memory::Memory;

/// Hashes waiting for a thread before callers are pushed back.
const QUEUE: usize = 1024;

type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// The hashing threads; they stop when the last `Passwords` handle is dropped.
#[derive(Clone, Debug)]
pub struct Passwords {
    jobs: mpsc::Sender<Job>,
    dummy_hash: Arc<str>,
}

/// The OWASP Password Storage Cheat Sheet's first argon2id configuration.
pub fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("static argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl Passwords {
    /// Starts `parallelism` hashing threads.
    pub async fn new(parallelism: usize) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..parallelism.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || hashing_thread(&queue))?;
        }
        let mut passwords = Self {
            jobs,
            dummy_hash: Arc::from(""),
        };
        let dummy =
            Password::for_login(uuid::Uuid::new_v4().to_string()).map_err(anyhow::Error::msg)?;
        passwords.dummy_hash = passwords.hash(dummy).await?.into();
        Ok(passwords)
    }

    pub async fn hash(&self, password: Password) -> anyhow::Result<String> {
        self.on_hashing_thread(move |_| hash_now(&password)).await?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when there is no user,
    /// in which case the answer is always false.
    pub async fn verify(&self, password: Password, stored: Option<String>) -> anyhow::Result<bool> {
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .on_hashing_thread(move |memory| {
                PasswordHash::new(&hash)
                    .is_ok_and(|parsed| memory.verify(password.expose().as_bytes(), &parsed))
            })
            .await?;
        Ok(exists && matches)
    }

    async fn on_hashing_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Memory) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let (reply, answer) = oneshot::channel();
        let span = Span::current();
        let job: Job = Box::new(move |memory| {
            // The caller may have gone away; its answer is then simply dropped.
            let _ = reply.send(span.in_scope(|| work(memory)));
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| anyhow::anyhow!("the hashing threads have stopped"))?;
        Ok(answer.await?)
    }
}

/// Takes jobs until every `Passwords` handle (and so the queue's sender) is gone.
fn hashing_thread(queue: &Mutex<mpsc::Receiver<Job>>) {
    let mut memory = Memory::default();
    loop {
        // The lock is held only while taking a job, never while hashing.
        let job = queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .blocking_recv();
        match job {
            Some(job) => job(&mut memory),
            None => return,
        }
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
