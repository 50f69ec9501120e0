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
//! (`TRIBUTARY__SECRETS__KEY`), else from the file `secrets.key_file`, else from
//! [`DEFAULT_KEY_FILE`](crate::settings::DEFAULT_KEY_FILE): one place, whatever the working
//! directory. Finding a key never creates one ([`Cipher::find`]); `keys.rs` decides when
//! [`Cipher::create`] may. A new key file is mode 0600 and appears under its name only once
//! complete (written to a temporary file, then hard-linked), so a crash or a second process
//! creating it at the same moment never sees half a key, and both end up with the same one.
//! A file that other users may read is refused rather than used. The key is never printed,
//! and errors about it never quote it; its [`Fingerprint`] names it instead.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::Rng;

use super::Error;
use crate::settings::{Secret, SecretsSettings};

/// Associated data of a sealed source URL.
pub(crate) const SOURCE_URL_AAD: &[u8] = b"tributary/source_url/v1";

/// Associated data of a branch role's sealed password: bound to the branch's name, so a
/// password copied onto another branch's row fails to open.
pub(crate) fn branch_password_aad(branch: &str) -> Vec<u8> {
    [
        b"tributary/branch_password/v1:".as_slice(),
        branch.as_bytes(),
    ]
    .concat()
}

/// What a key's fingerprint is the HMAC of. A MAC under the key of a constant cannot be
/// turned back into the key, and the key is 256 random bits: no guessing either.
const FINGERPRINT_INPUT: &[u8] = b"tributary/key-fingerprint/v1";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Where the key is (or would be), for messages: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// `secrets.key`, usually `TRIBUTARY__SECRETS__KEY`.
    Setting,
    /// A key file: `secrets.key_file` when `configured`, else the default location.
    File { path: PathBuf, configured: bool },
}

impl KeySource {
    /// Where `secrets` say the key is: the setting, else the configured file, else the
    /// default file.
    pub(crate) fn of(secrets: &SecretsSettings, default_key_file: &Path) -> KeySource {
        match (&secrets.key, &secrets.key_file) {
            (Some(_), _) => KeySource::Setting,
            (None, Some(path)) => KeySource::File {
                path: path.clone(),
                configured: true,
            },
            (None, None) => KeySource::File {
                path: default_key_file.to_owned(),
                configured: false,
            },
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Setting => f.write_str("secrets.key (TRIBUTARY__SECRETS__KEY)"),
            KeySource::File {
                path,
                configured: true,
            } => write!(f, "the key file {} (secrets.key_file)", path.display()),
            KeySource::File {
                path,
                configured: false,
            } => write!(
                f,
                "the key file {} (the default location: secrets.key_file is not set)",
                path.display()
            ),
        }
    }
}

/// A key's name: 16 hex characters of an HMAC-SHA256 of a constant under the key. Equal
/// fingerprints mean the same key; the fingerprint tells nothing about the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(String);

impl Fingerprint {
    fn of(key: &[u8; KEY_LEN]) -> Fingerprint {
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            FINGERPRINT_INPUT,
        );
        Fingerprint(
            tag.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// As the bookkeeping stores it (its CHECK constraint holds it to the same form).
    pub(crate) fn stored(text: String) -> Fingerprint {
        Fingerprint(text)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Seals and opens secrets with the configured key.
#[derive(Clone)]
pub(crate) struct Cipher {
    aead: ChaCha20Poly1305,
    source: KeySource,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cipher")
            .field("key", &"****")
            .field("source", &self.source)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// Opening failed: the key is not the one the value was sealed with, or the value was
/// altered. The two cannot be told apart, by design of the AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenFailed;

/// What [`Cipher::find`] found.
pub(crate) enum Lookup {
    Found(Cipher),
    /// The key file does not exist (a key setting always exists).
    Missing {
        path: PathBuf,
        source: KeySource,
    },
}

impl Cipher {
    /// The key where `secrets` say (see the module docs). Creates nothing.
    pub(crate) fn find(
        secrets: &SecretsSettings,
        default_key_file: &Path,
    ) -> Result<Lookup, Error> {
        let source = KeySource::of(secrets, default_key_file);
        let path = match (&source, &secrets.key) {
            (KeySource::File { path, .. }, _) => path,
            (KeySource::Setting, text) => {
                let key =
                    parse_key(text.as_ref().map_or("", Secret::expose)).map_err(|reason| {
                        Error::Key {
                            origin: source.to_string(),
                            reason,
                        }
                    })?;
                return Ok(Lookup::Found(Cipher::new(&key, source)));
            }
        };
        match read_key_file(path) {
            Ok(key) => Ok(Lookup::Found(Cipher::new(&key, source))),
            Err(Error::KeyFile { cause: e, .. }) if e.kind() == io::ErrorKind::NotFound => {
                Ok(Lookup::Missing {
                    path: path.clone(),
                    source,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// A new random key in the file at `path`, or the key another process created there
    /// first.
    pub(crate) fn create(path: &Path, source: KeySource) -> Result<Cipher, Error> {
        match create_key_file(path) {
            Ok(key) => {
                let cipher = Cipher::new(&key, source);
                tracing::warn!(
                    path = %path.display(),
                    fingerprint = %cipher.fingerprint,
                    "created a new key for encrypting source URLs; back this file up: \
                     without it the stored connectors cannot be used"
                );
                Ok(cipher)
            }
            Err(Error::KeyFile { cause: e, .. }) if e.kind() == io::ErrorKind::AlreadyExists => {
                read_key_file(path).map(|key| Cipher::new(&key, source))
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn new(key: &[u8; KEY_LEN], source: KeySource) -> Cipher {
        Cipher {
            aead: ChaCha20Poly1305::new(key.into()),
            source,
            fingerprint: Fingerprint::of(key),
        }
    }

    pub(crate) fn source(&self) -> &KeySource {
        &self.source
    }

    pub(crate) fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
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

fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN], Error> {
    let io_error = |action: &'static str| {
        move |cause: io::Error| Error::KeyFile {
            path: path.to_owned(),
            action,
            cause,
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
        move |cause: io::Error| Error::KeyFile {
            path: at,
            action,
            cause,
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

    /// HMAC-SHA256 of `tributary/key-fingerprint/v1` under 32 zero bytes, cut to 8 bytes
    /// (computed independently, with Python's `hmac`).
    const PINNED_FINGERPRINT_OF_ZEROES: &str = "105c7e47179e981b";

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

    fn find(secrets: &SecretsSettings, default: &Path) -> Result<Option<Cipher>, Error> {
        Cipher::find(secrets, default).map(|lookup| match lookup {
            Lookup::Found(cipher) => Some(cipher),
            Lookup::Missing { .. } => None,
        })
    }

    fn file(path: &Path, configured: bool) -> KeySource {
        KeySource::File {
            path: path.to_owned(),
            configured,
        }
    }

    #[test]
    fn the_key_is_looked_for_in_one_place_named_by_the_settings_alone() {
        let default = Path::new("/var/lib/tributary/tributary.key");
        let configured = Path::new("/etc/tributary/prod.key");
        for (key, key_file, expected) in [
            (None, None, file(default, false)),
            (None, Some(configured), file(configured, true)),
            (Some("k"), None, KeySource::Setting),
            (Some("k"), Some(configured), KeySource::Setting),
        ] {
            let secrets = SecretsSettings {
                key: key.map(|k| Secret::new(k.to_owned())),
                key_file: key_file.map(Path::to_owned),
            };
            assert_eq!(KeySource::of(&secrets, default), expected, "{secrets:?}");
        }
    }

    #[test]
    fn finding_never_creates_and_creating_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/tributary.key");
        let settings = SecretsSettings::default();
        assert!(find(&settings, &path).unwrap().is_none());
        assert!(
            !dir.path().join("nested").exists(),
            "finding created nothing"
        );

        let first = Cipher::create(&path, file(&path, false)).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(
            fs::read_dir(path.parent().unwrap()).unwrap().count() == 1,
            "no temp file left"
        );

        let second = find(&settings, &path).unwrap().unwrap();
        assert_eq!(second.fingerprint(), first.fingerprint());
        let sealed = first.seal(b"x", SOURCE_URL_AAD);
        assert_eq!(second.open(&sealed, SOURCE_URL_AAD).unwrap(), b"x");
    }

    #[test]
    fn processes_creating_together_agree_on_one_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tributary.key");
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Cipher::create(&path, file(&path, true)))
            })
            .collect();
        let ciphers: Vec<Cipher> = starts
            .into_iter()
            .map(|start| start.join().unwrap().unwrap())
            .collect();
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
            key: Some(Secret::new(format_key(&[1; KEY_LEN]))),
        };
        let c = find(&settings, &dir.path().join("default.key"))
            .unwrap()
            .unwrap();
        assert_eq!(c.source(), &KeySource::Setting);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file created"
        );

        let bad = SecretsSettings {
            key: Some(Secret::new("not a key".into())),
            ..settings
        };
        let err = find(&bad, &dir.path().join("default.key")).unwrap_err();
        assert!(matches!(err, Error::Key { .. }), "{err}");
        assert!(!err.to_string().contains("not a key"), "{err}");
    }

    #[test]
    fn readable_or_malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, format_key(&[2; KEY_LEN])).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = find(&SecretsSettings::default(), &path).unwrap_err();
        assert!(
            matches!(err, Error::KeyFilePermissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(find(&SecretsSettings::default(), &path).unwrap().is_some());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "too short\n").unwrap();
        let err = find(&SecretsSettings::default(), &path).unwrap_err();
        assert!(matches!(err, Error::Key { .. }), "{err}");
    }

    #[test]
    fn fingerprints_tell_keys_apart_and_show_nothing_of_them() {
        let (a, b) = (cipher(7), cipher(8));
        assert_eq!(a.fingerprint(), cipher(7).fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        let text = a.fingerprint().to_string();
        assert_eq!(text.len(), 16);
        assert!(text
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert!(!format_key(&[7; KEY_LEN]).contains(&text));
        // Pinned: a fingerprint recorded by one release names the same key in the next.
        assert_eq!(
            cipher(0).fingerprint().as_str(),
            PINNED_FINGERPRINT_OF_ZEROES
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = cipher(0xee);
        let debug = format!("{c:?}");
        assert!(!debug.contains("ee"), "{debug}");
    }
}
