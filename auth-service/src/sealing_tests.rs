use super::*;

fn keyring(entries: &[[u8; 32]]) -> KeyEncryptionKeys {
    let value = entries
        .iter()
        .map(|material| STANDARD.encode(material))
        .collect::<Vec<_>>()
        .join(",");
    KeyEncryptionKeys::parse(&value).unwrap()
}

const KID: &str = "a-signing-key-id";

#[test]
fn a_sealed_key_opens_under_its_keyring_and_hides_the_secret() {
    let ring = keyring(&[[1; 32]]);
    let secret = [7u8; 32];
    let sealed = ring.seal(KID, &secret);
    assert_eq!(*ring.open(KID, &sealed).unwrap(), secret);
    assert_eq!(classify(&sealed), Stored::Sealed(ring.newest()));
    for encoded in [
        hex::encode(secret),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
    ] {
        assert!(!sealed.contains(&encoded));
    }
    // A fresh nonce each time: sealing twice never gives the same envelope.
    assert_ne!(sealed, ring.seal(KID, &secret));
}

#[test]
fn the_newest_key_seals_and_every_key_opens() {
    let old = keyring(&[[1; 32]]);
    let rotated = keyring(&[[2; 32], [1; 32]]);
    let secret = [9u8; 32];
    let under_old = old.seal(KID, &secret);
    assert_eq!(*rotated.open(KID, &under_old).unwrap(), secret);
    let under_new = rotated.seal(KID, &secret);
    assert_eq!(classify(&under_new), Stored::Sealed(rotated.newest()));
    assert_ne!(rotated.newest(), old.newest());
    assert_eq!(rotated.ids()[1], old.newest());
    // The old keyring alone cannot open what the new key sealed.
    assert_eq!(
        old.open(KID, &under_new).unwrap_err(),
        OpenError::UnknownKek(rotated.newest())
    );
}

#[test]
fn a_wrong_keyring_a_moved_envelope_or_a_tampered_one_do_not_open() {
    let ring = keyring(&[[1; 32]]);
    let sealed = ring.seal(KID, &[3; 32]);
    assert!(matches!(
        keyring(&[[4; 32]]).open(KID, &sealed),
        Err(OpenError::UnknownKek(_))
    ));
    // The kid is associated data: the envelope of one key is no good on another's row.
    assert_eq!(
        ring.open("another-kid", &sealed).unwrap_err(),
        OpenError::Rejected(ring.newest())
    );
    let mut tampered = sealed.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(
        ring.open(KID, &tampered).unwrap_err(),
        OpenError::Rejected(ring.newest())
    );
    assert_eq!(
        ring.open(KID, "v1.0011223344556677.short").unwrap_err(),
        OpenError::UnknownKek(KekId([0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]))
    );
    let truncated = &sealed[..sealed.len() - 4];
    assert_eq!(ring.open(KID, truncated).unwrap_err(), OpenError::Malformed);
}

#[test]
fn plaintext_rows_of_the_old_schema_are_recognised() {
    let secret = [5u8; 32];
    let old_row = URL_SAFE_NO_PAD.encode(secret);
    assert_eq!(classify(&old_row), Stored::Plaintext);
    assert_eq!(*plaintext_secret(&old_row).unwrap(), secret);
    assert_eq!(
        keyring(&[[1; 32]]).open(KID, &old_row).unwrap_err(),
        OpenError::Plaintext
    );
    assert_eq!(classify("garbage"), Stored::Malformed);
    assert!(plaintext_secret("garbage").is_none());
}

#[test]
fn bad_keyrings_are_refused_without_echoing_a_key() {
    let short = STANDARD.encode([1u8; 31]);
    let good = STANDARD.encode([2u8; 32]);
    for (value, expected) in [
        (String::new(), "entry 1 is empty"),
        (short.clone(), "entry 1 has 31 bytes"),
        (format!("{good},{short}"), "entry 2 has 31 bytes"),
        (format!("{good},,{good}"), "entry 2 is empty"),
        (
            format!("{good}, {good}"),
            "entries 1 and 2 are the same key",
        ),
        ("not base64 at all!".to_owned(), "entry 1 is not base64"),
        (STANDARD.encode([0u8; 2048]), "longer than"),
    ] {
        let err = KeyEncryptionKeys::parse(&value).unwrap_err();
        assert!(err.contains(expected), "{value:?}: {err}");
        assert!(!err.contains(&good) && !err.contains(&short), "{err}");
    }
}

#[test]
fn every_base64_spelling_of_a_key_is_the_same_key() {
    let material = [0xfbu8; 48];
    let ids: Vec<KekId> = [
        STANDARD.encode(material),
        STANDARD_NO_PAD.encode(material),
        URL_SAFE.encode(material),
        URL_SAFE_NO_PAD.encode(material),
    ]
    .iter()
    .map(|value| KeyEncryptionKeys::parse(value).unwrap().newest())
    .collect();
    assert!(ids.windows(2).all(|pair| pair[0] == pair[1]), "{ids:?}");
}

#[test]
fn a_generated_key_is_accepted_and_the_debug_form_shows_only_fingerprints() {
    let generated = KeyEncryptionKeys::generate_encoded();
    let ring = KeyEncryptionKeys::parse(&generated).unwrap();
    let debug = format!("{ring:?}");
    assert!(debug.contains(&ring.newest().to_string()), "{debug}");
    assert!(!debug.contains(generated.as_str()), "{debug}");
}
