//! A hashing thread's argon2 working memory, kept from one check to the next.
//!
//! The crate's `verify_password` allocates the memory (19 MiB with our parameters) for every
//! check, and the allocator hands a block that large back to the kernel as soon as it is freed,
//! so each check faulted in and zeroed about 4 900 fresh pages: some 40 % of a check's CPU time
//! went to the kernel. The memory is wiped after each check, so what a check derived from a
//! password does not outlive it, just as when the kernel took the pages back.

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{self, Output, Salt},
};
use zeroize::Zeroize;

/// Working memory for argon2, grown to the largest parameters it has served.
#[derive(Debug, Default)]
pub struct Memory {
    blocks: Vec<Block>,
}

impl Memory {
    /// Whether `password` matches `hash`, a PHC string of any argon2 variant, version and
    /// parameters; the outputs are compared in constant time. Same answer as the crate's
    /// `PasswordVerifier::verify_password`.
    pub fn verify(&mut self, password: &[u8], hash: &PasswordHash<'_>) -> bool {
        let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
            return false;
        };
        self.recompute(password, hash, salt, expected.len())
            .is_ok_and(|computed| computed == expected)
    }

    fn recompute(
        &mut self,
        password: &[u8],
        hash: &PasswordHash<'_>,
        salt: Salt<'_>,
        output_len: usize,
    ) -> password_hash::Result<Output> {
        let algorithm = Algorithm::try_from(hash.algorithm)?;
        let version = hash
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let params = Params::try_from(hash)?;
        let mut salt_buffer = [0; Salt::MAX_LENGTH];
        let salt = salt.decode_b64(&mut salt_buffer)?;
        let blocks = self.blocks_for(&params);
        let argon2 = Argon2::new(algorithm, version, params);
        let output = Output::init_with(output_len, |out| {
            Ok(argon2.hash_password_into_with_memory(password, salt, out, &mut *blocks)?)
        });
        blocks.iter_mut().zeroize();
        output
    }

    fn blocks_for(&mut self, params: &Params) -> &mut [Block] {
        let count = params.block_count();
        if self.blocks.len() < count {
            self.blocks.resize(count, Block::default());
        }
        &mut self.blocks[..count]
    }
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher as _, PasswordVerifier as _};

    use super::*;

    fn new_salt() -> password_hash::SaltString {
        password_hash::SaltString::generate(&mut password_hash::rand_core::OsRng)
    }

    /// Every variant and a few parameter sets, against the crate's own verifier.
    #[test]
    fn agrees_with_the_crate_verifier() {
        let mut memory = Memory::default();
        let cases = [
            (Algorithm::Argon2id, Params::new(19 * 1024, 2, 1, None)),
            (Algorithm::Argon2id, Params::new(8 * 1024, 1, 2, Some(16))),
            (Algorithm::Argon2i, Params::new(4 * 1024, 3, 1, None)),
            (Algorithm::Argon2d, Params::new(32 * 1024, 1, 1, Some(64))),
        ];
        for (algorithm, params) in cases {
            let argon2 = Argon2::new(algorithm, Version::V0x13, params.unwrap());
            let stored = argon2
                .hash_password(b"correct horse battery", &new_salt())
                .unwrap()
                .to_string();
            let parsed = PasswordHash::new(&stored).unwrap();
            for password in [&b"correct horse battery"[..], b"correct horse batterz", b""] {
                assert_eq!(
                    memory.verify(password, &parsed),
                    argon2.verify_password(password, &parsed).is_ok(),
                    "{stored} with {password:?}"
                );
            }
        }
    }

    #[test]
    fn a_check_leaves_the_memory_wiped() {
        let mut memory = Memory::default();
        let stored = crate::passwords::argon2()
            .hash_password(b"correct horse battery", &new_salt())
            .unwrap()
            .to_string();
        assert!(memory.verify(
            b"correct horse battery",
            &PasswordHash::new(&stored).unwrap()
        ));
        assert!(
            memory
                .blocks
                .iter()
                .all(|block| block.as_ref().iter().all(|word| *word == 0))
        );
    }
}
