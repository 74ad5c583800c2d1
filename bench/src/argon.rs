//! The Login baseline: raw argon2id verification with auth-service's exact parameters
//! (`passwords::argon2()`), on one OS thread per core and nothing else. Login cannot beat this
//! on the same machine, so `Login / raw` is the share of the CPU the service turns into
//! password checks rather than overhead (gRPC, database, Redis, token signing, queueing).
//! With [`RawMemory::Reused`] each thread checks in memory of its own, through the service's
//! own [`passwords::Memory`].

use std::{sync::Arc, time::Instant};

use argon2::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, password_hash::SaltString};
use auth_service::passwords;
use futures::future::BoxFuture;

use crate::{
    cli::RawMemory,
    cpu::sample_window,
    load::{Measurement, Timing, Workload},
};

const PASSWORD: &[u8] = b"correct horse battery staple";

/// Verifies a correct password in a loop on `threads` OS threads.
#[derive(Debug)]
pub struct RawArgon {
    threads: usize,
    hash: Arc<str>,
    memory: RawMemory,
}

impl RawArgon {
    pub fn new(threads: usize, memory: RawMemory) -> anyhow::Result<Self> {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let hash = passwords::argon2()
            .hash_password(PASSWORD, &salt)
            .map_err(|err| anyhow::anyhow!("hashing failed: {err}"))?
            .to_string();
        Ok(Self {
            threads: threads.max(1),
            hash: hash.into(),
            memory,
        })
    }
}

impl Workload for RawArgon {
    fn slice(&mut self, timing: Timing) -> BoxFuture<'_, Measurement> {
        let (threads, hash, memory) = (self.threads, Arc::clone(&self.hash), self.memory);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || verify_on_threads(threads, &hash, memory, timing))
                .await
                .unwrap_or_else(|err| {
                    let mut failed = Measurement::new(threads, timing.measure);
                    failed.record(
                        timing.measure,
                        Err(format!("argon2 threads panicked: {err}")),
                    );
                    failed
                })
        })
    }
}

fn verify_on_threads(threads: usize, hash: &str, memory: RawMemory, timing: Timing) -> Measurement {
    let measure_from = Instant::now() + timing.settle;
    let until = measure_from + timing.measure;
    let sampler = sample_window(measure_from, timing.measure);
    let results: Vec<Measurement> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let mut measurement = Measurement::new(1, timing.measure);
                    let mut reused = (memory == RawMemory::Reused).then(passwords::Memory::default);
                    loop {
                        let sent = Instant::now();
                        if sent >= until {
                            break;
                        }
                        // Parsed per call, as the service does.
                        let result = PasswordHash::new(hash)
                            .map_err(|err| err.to_string())
                            .and_then(|parsed| match &mut reused {
                                None => passwords::argon2()
                                    .verify_password(PASSWORD, &parsed)
                                    .map_err(|err| err.to_string()),
                                Some(memory) => memory
                                    .verify(PASSWORD, &parsed)
                                    .then_some(())
                                    .ok_or_else(|| "the password did not verify".into()),
                            });
                        let done = Instant::now();
                        if done >= measure_from && done < until {
                            measurement.record(done - sent, result);
                        }
                    }
                    measurement
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker.join().unwrap_or_else(|_| {
                    let mut failed = Measurement::new(1, timing.measure);
                    failed.record(timing.measure, Err("an argon2 thread panicked".into()));
                    failed
                })
            })
            .collect()
    });
    let mut total = Measurement::new(threads, timing.measure);
    for measurement in results {
        total.merge(measurement);
    }
    total.cpu = sampler.join().ok().flatten();
    total
}
