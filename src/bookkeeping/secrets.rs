//! The key that encrypts source URLs at rest, and the cipher built from it.
//!
//! A source URL carries the source's password, and the control database (with its backups
//! and dumps) is read by more people than should see it. So the URL is sealed with
//! ChaCha20-Poly1305 before it is stored:
//!
//! ```text
//! source_url_ciphertext = nonce (12 random bytes, new for every seal) || ciphertext || tag (16)
//! associated data       = b"tributary/source_url/v1"
//! ```
//!
//! The associated data is authenticated, not stored: it binds a ciphertext to what it is
//! for, so a value sealed for another purpose (or another format version) fails to open.
//! A random 96-bit nonce is safe for far more seals than a daemon ever makes with one key.
//!
//! The key is 32 bytes written as 64 hex characters. It comes from `secrets.key`
//! (`TRIBUTARY__SECRETS__KEY`), else from the file `secrets.key_file`, else from the default
//! file beside the configuration. A missing file is created with a new random key, mode
//! 0600, appearing under its name only once complete (written to a temporary file, then
//! hard-linked), so a crash or a second daemon starting at the same moment never sees half
//! a key. A file that other users may read is refused rather than used. The key is never
//! printed, and errors about it never quote it.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::Rng;

use super::Error;
use crate::settings::SecretsSettings;

/// Associated data of a sealed source URL.
pub(crate) const SOURCE_URL_AAD: &[u8] = b"tributary/source_url/v1";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Where the key came from, for messages (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// `secrets.key`, usually `TRIBUTARY__SECRETS__KEY`.
    Setting,
    /// A key file; `created` when this process created it because none existed.
    File { path: PathBuf, created: bool },
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Setting => f.write_str("secrets.key (TRIBUTARY__SECRETS__KEY)"),
            KeySource::File {
                path,
                created: false,
            } => write!(f, "the key file {}", path.display()),
            KeySource::File {
                path,
                created: true,
            } => write!(
                f,
                "the key file {}, which was created new because it did not exist",
                path.display()
            ),
        }
    }
}

/// Seals and opens secrets with the configured key.
#[derive(Clone)]
pub(crate) struct Cipher {
    aead: ChaCha20Poly1305,
    source: KeySource,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cipher")
            .field("key", &"****")
            .field("source", &self.source)
            .finish()
    }
}

/// Opening failed: the key is not the one the value was sealed with, or the value was
/// altered. The two cannot be told apart, by design of the AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenFailed;

impl Cipher {
    /// Loads the key as the module docs describe, creating the key file if needed.
    pub(crate) fn load(
        secrets: &SecretsSettings,
        default_key_file: &Path,
    ) -> Result<Cipher, Error> {
        if let Some(text) = &secrets.key {
            let key = parse_key(text).map_err(|reason| Error::Key {
                origin: KeySource::Setting.to_string(),
                reason,
            })?;
            return Ok(Cipher::new(&key, KeySource::Setting));
        }
        let path = secrets.key_file.as_deref().unwrap_or(default_key_file);
        let (key, created) = load_or_create_key_file(path)?;
        let source = KeySource::File {
            path: path.to_owned(),
            created,
        };
        Ok(Cipher::new(&key, source))
    }

    pub(crate) fn new(key: &[u8; KEY_LEN], source: KeySource) -> Cipher {
        Cipher {
            aead: ChaCha20Poly1305::new(key.into()),
            source,
        }
    }

    pub(crate) fn source(&self) -> &KeySource {
        &self.source
    }

    /// `nonce || ciphertext || tag`, with a fresh random nonce.
    pub(crate) fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("ChaCha20-Poly1305 only fails on messages of more than 256 GiB");
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// The plaintext of what [`Cipher::seal`] produced with the same key and `aad`.
    pub(crate) fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenFailed> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenFailed);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| OpenFailed)
    }
}

/// 64 hex characters (surrounding whitespace ignored) → 32 bytes. The reason never quotes
/// the input: a nearly valid key is still a secret.
fn parse_key(text: &str) -> Result<[u8; KEY_LEN], String> {
    let text = text.trim();
    if text.len() != 2 * KEY_LEN {
        return Err(format!(
            "expected {} hexadecimal characters, found {} characters",
            2 * KEY_LEN,
            text.chars().count()
        ));
    }
    let mut key = [0u8; KEY_LEN];
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => *byte = (hi * 16 + lo) as u8,
            _ => return Err("it contains characters other than 0-9 and a-f".into()),
        }
    }
    Ok(key)
}

fn format_key(key: &[u8; KEY_LEN]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the key file at `path`, or creates it when there is none. `true` when created.
fn load_or_create_key_file(path: &Path) -> Result<([u8; KEY_LEN], bool), Error> {
    match read_key_file(path) {
        Err(Error::KeyFile { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other.map(|key| (key, false)),
    }
    match create_key_file(path) {
        Ok(key) => {
            tracing::warn!(
                path = %path.display(),
                "created a new key for encrypting source URLs; back this file up: \
                 without it the stored connectors cannot be used"
            );
            Ok((key, true))
        }
        // Another process created it first: use theirs.
        Err(Error::KeyFile { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            read_key_file(path).map(|key| (key, false))
        }
        Err(e) => Err(e),
    }
}

fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN], Error> {
    let io_error = |action: &'static str| {
        move |source: io::Error| Error::KeyFile {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let mut file = File::open(path).map_err(io_error("open"))?;
    // Checked on the open file, so the file checked is the file read.
    let metadata = file.metadata().map_err(io_error("inspect"))?;
    if !metadata.is_file() {
        return Err(Error::Key {
            origin: format!("the key file {}", path.display()),
            reason: "it is not a regular file".into(),
        });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::KeyFilePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    // A valid file is 65 bytes; reading a little more is enough to call a larger one wrong.
    (&mut file)
        .take(1024)
        .read_to_string(&mut text)
        .map_err(io_error("read"))?;
    parse_key(&text).map_err(|reason| Error::Key {
        origin: format!("the key file {}", path.display()),
        reason,
    })
}

/// Writes a new random key to a temporary file (0600 before any byte is written), then
/// links it to `path`, which fails with `AlreadyExists` if `path` appeared meanwhile.
fn create_key_file(path: &Path) -> Result<[u8; KEY_LEN], Error> {
    let io_error = |action: &'static str, at: &Path| {
        let at = at.to_owned();
        move |source: io::Error| Error::KeyFile {
            path: at,
            action,
            source,
        }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("create the directory of", path))?;

    let file_name = path.file_name().map_or_else(
        || "tributary.key".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let temp = dir.join(format!(
        ".{file_name}.{:016x}.tmp",
        rand::thread_rng().gen::<u64>()
    ));
    let key: [u8; KEY_LEN] = ChaCha20Poly1305::generate_key(&mut OsRng).into();
    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        // The umask may only remove bits; set them exactly, before the key is written.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(format_key(&key).as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    })();
    let linked = written
        .map_err(io_error("write", &temp))
        .and_then(|()| fs::hard_link(&temp, path).map_err(io_error("create", path)));
    let _ = fs::remove_file(&temp);
    linked?;
    // Make the new name durable too; failing here only weakens crash safety.
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), "syncing the key file's directory: {e}");
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(byte: u8) -> Cipher {
        Cipher::new(&[byte; KEY_LEN], KeySource::Setting)
    }

    #[test]
    fn seal_then_open_round_trips() {
        let c = cipher(7);
        let url = b"postgresql://u:hunter2@db.example.com/sales";
        let sealed = c.seal(url, SOURCE_URL_AAD);
        assert_eq!(sealed.len(), NONCE_LEN + url.len() + TAG_LEN);
        assert_eq!(c.open(&sealed, SOURCE_URL_AAD).unwrap(), url);
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn every_seal_uses_a_new_nonce() {
        let c = cipher(7);
        let a = c.seal(b"same", SOURCE_URL_AAD);
        let b = c.seal(b"same", SOURCE_URL_AAD);
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn opening_fails_with_another_key_other_purpose_or_altered_bytes() {
        let sealed = cipher(7).seal(b"secret", SOURCE_URL_AAD);
        assert_eq!(cipher(8).open(&sealed, SOURCE_URL_AAD), Err(OpenFailed));
        assert_eq!(
            cipher(7).open(&sealed, b"tributary/other/v1"),
            Err(OpenFailed)
        );
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 1;
            assert_eq!(cipher(7).open(&altered, SOURCE_URL_AAD), Err(OpenFailed));
        }
        assert_eq!(
            cipher(7).open(&sealed[..20], SOURCE_URL_AAD),
            Err(OpenFailed)
        );
        assert_eq!(cipher(7).open(&[], SOURCE_URL_AAD), Err(OpenFailed));
    }

    #[test]
    fn keys_parse_from_64_hex_characters() {
        let key = [0xabu8; KEY_LEN];
        let text = format_key(&key);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_key(&text).unwrap(), key);
        assert_eq!(
            parse_key(&format!("  {}\n", text.to_uppercase())).unwrap(),
            key
        );
        let wrong_length = parse_key(&text[..62]).unwrap_err();
        assert!(wrong_length.contains("found 62"), "{wrong_length}");
        let not_hex = format!("{}zz", &text[..62]);
        let err = parse_key(&not_hex).unwrap_err();
        assert!(
            !err.contains(&text[..62]),
            "the key must not be quoted: {err}"
        );
        assert!(parse_key("").is_err());
        // Multi-byte characters must not be mistaken for pairs of digits.
        assert!(parse_key(&"é".repeat(32)).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/tributary.key");
        let settings = SecretsSettings::default();
        let first = Cipher::load(&settings, &path).unwrap();
        assert!(matches!(
            first.source(),
            KeySource::File { created: true, .. }
        ));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(
            fs::read_dir(path.parent().unwrap()).unwrap().count() == 1,
            "no temp file left"
        );

        let second = Cipher::load(&settings, &path).unwrap();
        assert!(matches!(
            second.source(),
            KeySource::File { created: false, .. }
        ));
        let sealed = first.seal(b"x", SOURCE_URL_AAD);
        assert_eq!(second.open(&sealed, SOURCE_URL_AAD).unwrap(), b"x");
    }

    #[test]
    fn daemons_starting_together_agree_on_one_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tributary.key");
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Cipher::load(&SecretsSettings::default(), &path))
            })
            .collect();
        let ciphers: Vec<Cipher> = starts
            .into_iter()
            .map(|start| start.join().unwrap().unwrap())
            .collect();
        let created = ciphers
            .iter()
            .filter(|c| matches!(c.source(), KeySource::File { created: true, .. }))
            .count();
        assert_eq!(created, 1);
        let sealed = ciphers[0].seal(b"x", SOURCE_URL_AAD);
        for c in &ciphers {
            assert_eq!(c.open(&sealed, SOURCE_URL_AAD).unwrap(), b"x");
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn key_setting_wins_over_files() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SecretsSettings {
            key_file: Some(dir.path().join("configured.key")),
            key: Some(format_key(&[1; KEY_LEN])),
        };
        let c = Cipher::load(&settings, &dir.path().join("default.key")).unwrap();
        assert_eq!(c.source(), &KeySource::Setting);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file created"
        );

        let bad = SecretsSettings {
            key: Some("not a key".into()),
            ..settings
        };
        let err = Cipher::load(&bad, &dir.path().join("default.key")).unwrap_err();
        assert!(matches!(err, Error::Key { .. }), "{err}");
        assert!(!err.to_string().contains("not a key"), "{err}");
    }

    #[test]
    fn readable_or_malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, format_key(&[2; KEY_LEN])).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Cipher::load(&SecretsSettings::default(), &path).unwrap_err();
        assert!(
            matches!(err, Error::KeyFilePermissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Cipher::load(&SecretsSettings::default(), &path).is_ok());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "too short\n").unwrap();
        let err = Cipher::load(&SecretsSettings::default(), &path).unwrap_err();
        assert!(matches!(err, Error::Key { .. }), "{err}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = cipher(0xee);
        let debug = format!("{c:?}");
        assert!(!debug.contains("ee"), "{debug}");
    }
}
