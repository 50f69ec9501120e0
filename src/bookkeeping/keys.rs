//! Which key a bookkeeping's secrets are sealed with, checked before anything is written,
//! and the one moment a key may be made.
//!
//! The bookkeeping records the [`Fingerprint`] of its key in
//! `tributary.installation.key_fingerprint`, in the transaction that stores its first
//! source URL. From then on:
//!
//! - every command that opens the bookkeeping with a key compares fingerprints first, and
//!   refuses another key ([`Error::WrongKey`]) before it writes anything;
//! - a command that finds no key fails with where it looked ([`Error::NoKey`]), and never
//!   makes one: a second key would only seal new URLs that the first cannot open, and the
//!   other way round.
//!
//! So a key is created only by the first seal of a bookkeeping that holds no source URL
//! (`connector create` on a new installation): commands that only read, and `run`, which
//! only opens URLs, never create one. Until then there is nothing to open, so commands and
//! the daemon start without a key; the daemon reads it when the first connector appears.
//!
//! Deleting the last connector clears the fingerprint (nothing sealed is left to protect):
//! after a lost key, `connector delete --force` of every connector opens the way to a new
//! one.
//!
//! URLs sealed before fingerprints were recorded: the first key that opens every one of
//! them is recorded; a key that opens none of them is refused as wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::{PgConnection, PgPool};
use tokio::sync::OnceCell;

use super::secrets::{Cipher, Fingerprint, KeySource, Lookup, SOURCE_URL_AAD};
use super::Error;
use crate::settings::SecretsSettings;

/// The bookkeeping's key: found at open, or later (nothing was sealed yet then).
///
/// Cheap to clone: clones share the key once it is found.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    secrets: SecretsSettings,
    default_key_file: PathBuf,
    cipher: Arc<OnceCell<Cipher>>,
}

impl Keys {
    /// At open, before anything but migrations is written: the key, checked against the
    /// bookkeeping. Without one, an error once the bookkeeping holds sealed URLs.
    pub(super) async fn open(
        pool: &PgPool,
        secrets: &SecretsSettings,
        default_key_file: &Path,
        found: Lookup,
    ) -> Result<Keys, Error> {
        let keys = Keys::unchecked(secrets, default_key_file);
        match found {
            Lookup::Found(cipher) => {
                check(pool, &cipher).await?;
                keys.cipher.set(cipher).expect("a new cell is empty");
            }
            Lookup::Missing { source, .. } => {
                let recorded = recorded(pool).await?;
                if recorded.is_some() || sealed(pool).await? > 0 {
                    return Err(no_key(&source, recorded));
                }
            }
        }
        Ok(keys)
    }

    /// No key yet, none checked: it is looked for, and checked, when a URL is opened or
    /// sealed.
    pub(super) fn unchecked(secrets: &SecretsSettings, default_key_file: &Path) -> Keys {
        Keys {
            secrets: secrets.clone(),
            default_key_file: default_key_file.to_owned(),
            cipher: Arc::default(),
        }
    }

    /// Where the key is, or would be.
    pub(super) fn source(&self) -> KeySource {
        KeySource::of(&self.secrets, &self.default_key_file)
    }

    /// The key to open a sealed URL with, read now if it was not found at open.
    pub(super) async fn opening(&self, pool: &PgPool) -> Result<&Cipher, Error> {
        self.cipher
            .get_or_try_init(|| async {
                match Cipher::find(&self.secrets, &self.default_key_file)? {
                    Lookup::Found(cipher) => check(pool, &cipher).await.map(|()| cipher),
                    Lookup::Missing { source, .. } => Err(no_key(&source, recorded(pool).await?)),
                }
            })
            .await
    }

    /// Seals a secret other than a source URL (a branch role's password) with the
    /// bookkeeping's key. Never creates a key: there is one whenever a connector exists,
    /// and every branch has one.
    pub(super) async fn seal(
        &self,
        pool: &PgPool,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, Error> {
        Ok(self.opening(pool).await?.seal(plaintext, aad))
    }

    /// After a URL did not open with `cipher`: [`Error::WrongKey`] if the bookkeeping has
    /// recorded another key since `cipher` was checked (another command sealed the first URL
    /// with its own key while this process ran without a recorded one).
    pub(super) async fn recheck(&self, pool: &PgPool, cipher: &Cipher) -> Result<(), Error> {
        match recorded(pool).await? {
            Some(expected) if &expected != cipher.fingerprint() => {
                Err(wrong_key(cipher, Some(expected)))
            }
            _ => Ok(()),
        }
    }

    /// Seals a source URL for a row written in `tx`, and records the key's fingerprint in
    /// `tx` if none is (refusing the key if another one is). Creates the key if there is
    /// none and the bookkeeping holds no sealed URL.
    pub(super) async fn seal_source_url(
        &self,
        pool: &PgPool,
        tx: &mut PgConnection,
        url: &str,
    ) -> Result<Vec<u8>, Error> {
        let cipher = self
            .cipher
            .get_or_try_init(|| async {
                match Cipher::find(&self.secrets, &self.default_key_file)? {
                    Lookup::Found(cipher) => check(pool, &cipher).await.map(|()| cipher),
                    Lookup::Missing { path, source } => {
                        let recorded = recorded(pool).await?;
                        if recorded.is_some() || sealed(pool).await? > 0 {
                            return Err(no_key(&source, recorded));
                        }
                        Cipher::create(&path, source)
                    }
                }
            })
            .await?;
        // Locked: two first seals with different keys at once, and one of them is refused.
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT key_fingerprint FROM tributary.installation FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        match recorded.map(Fingerprint::stored) {
            None => {
                sqlx::query("UPDATE tributary.installation SET key_fingerprint = $1")
                    .bind(cipher.fingerprint().as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            Some(expected) if &expected != cipher.fingerprint() => {
                return Err(wrong_key(cipher, Some(expected)))
            }
            Some(_) => {}
        }
        Ok(cipher.seal(url.as_bytes(), SOURCE_URL_AAD))
    }
}

/// What the bookkeeping says of a key.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Its fingerprint is the recorded one.
    Matches,
    /// Nothing recorded and nothing sealed: the first seal records it.
    Unchecked,
    /// Nothing recorded, and it opens every URL sealed before fingerprints were: record it.
    Adopt,
    /// Nothing recorded, and it opens some of those URLs but not all (several keys were
    /// used): recorded by the next seal; the others fail to decrypt, by name.
    Partly,
    /// Not the bookkeeping's key; `None` when no fingerprint was recorded yet.
    Wrong { expected: Option<Fingerprint> },
}

/// Of the sealed URLs, how many the key opens.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    sealed: usize,
    opened: usize,
}

fn judge(recorded: Option<Fingerprint>, ours: &Fingerprint, tally: Tally) -> Verdict {
    match recorded {
        Some(expected) if &expected == ours => Verdict::Matches,
        Some(expected) => Verdict::Wrong {
            expected: Some(expected),
        },
        None if tally.sealed == 0 => Verdict::Unchecked,
        None if tally.opened == tally.sealed => Verdict::Adopt,
        None if tally.opened == 0 => Verdict::Wrong { expected: None },
        None => Verdict::Partly,
    }
}

/// Compares `cipher` with the bookkeeping's key (see [`judge`]), recording it when it is
/// the key of URLs sealed before fingerprints were.
async fn check(pool: &PgPool, cipher: &Cipher) -> Result<(), Error> {
    let recorded = recorded(pool).await?;
    let tally = match recorded {
        Some(_) => Tally::default(),
        None => tally(pool, cipher).await?,
    };
    match judge(recorded, cipher.fingerprint(), tally) {
        Verdict::Matches | Verdict::Unchecked => Ok(()),
        Verdict::Adopt => {
            sqlx::query(
                "UPDATE tributary.installation SET key_fingerprint = $1
                  WHERE key_fingerprint IS NULL",
            )
            .bind(cipher.fingerprint().as_str())
            .execute(pool)
            .await?;
            tracing::info!(
                fingerprint = %cipher.fingerprint(),
                "recorded the fingerprint of the key that opens every stored source URL"
            );
            Ok(())
        }
        Verdict::Partly => {
            tracing::warn!(
                key = %cipher.source(),
                "this key opens {} of the {} stored source URLs: the others were stored with \
                 another key",
                tally.opened,
                tally.sealed
            );
            Ok(())
        }
        Verdict::Wrong { expected } => Err(wrong_key(cipher, expected)),
    }
}

async fn recorded(pool: &PgPool) -> Result<Option<Fingerprint>, Error> {
    let text: Option<String> =
        sqlx::query_scalar("SELECT key_fingerprint FROM tributary.installation")
            .fetch_one(pool)
            .await?;
    Ok(text.map(Fingerprint::stored))
}

/// How many secrets are stored (sealed): source URLs and branch passwords.
async fn sealed(pool: &PgPool) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM tributary.connectors)
              + (SELECT count(password_ciphertext) FROM tributary.branches)",
    )
    .fetch_one(pool)
    .await?)
}

async fn tally(pool: &PgPool, cipher: &Cipher) -> Result<Tally, Error> {
    let sealed: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT source_url_ciphertext FROM tributary.connectors")
            .fetch_all(pool)
            .await?;
    Ok(Tally {
        sealed: sealed.len(),
        opened: sealed
            .iter()
            .filter(|s| cipher.open(s, SOURCE_URL_AAD).is_ok())
            .count(),
    })
}

fn no_key(source: &KeySource, expected: Option<Fingerprint>) -> Error {
    Error::NoKey {
        looked_at: source.to_string(),
        expected: expected.map(|f| f.to_string()),
    }
}

fn wrong_key(cipher: &Cipher, expected: Option<Fingerprint>) -> Error {
    Error::WrongKey {
        found: cipher.fingerprint().to_string(),
        expected: expected.map(|f| f.to_string()),
        origin: cipher.source().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(text: &str) -> Fingerprint {
        Fingerprint::stored(text.to_owned())
    }

    #[test]
    fn a_key_is_judged_by_the_recorded_fingerprint_else_by_what_it_opens() {
        let ours = fingerprint("00000000000000aa");
        let other = fingerprint("00000000000000bb");
        let tally = |sealed, opened| Tally { sealed, opened };
        for (recorded, tally, verdict) in [
            (Some(ours.clone()), tally(3, 3), Verdict::Matches),
            // The recorded fingerprint decides, whatever was counted.
            (Some(ours.clone()), tally(0, 0), Verdict::Matches),
            (
                Some(other.clone()),
                tally(0, 0),
                Verdict::Wrong {
                    expected: Some(other.clone()),
                },
            ),
            (None, tally(0, 0), Verdict::Unchecked),
            (None, tally(2, 2), Verdict::Adopt),
            (None, tally(2, 0), Verdict::Wrong { expected: None }),
            (None, tally(3, 1), Verdict::Partly),
        ] {
            assert_eq!(
                judge(recorded.clone(), &ours, tally),
                verdict,
                "{recorded:?} {tally:?}"
            );
        }
    }

    #[test]
    fn messages_say_where_the_key_was_looked_for_and_what_to_do() {
        let source = KeySource::File {
            path: "/var/lib/tributary/tributary.key".into(),
            configured: false,
        };
        let missing = no_key(&source, Some(fingerprint("0123456789abcdef"))).to_string();
        for needle in [
            "/var/lib/tributary/tributary.key",
            "default location",
            "0123456789abcdef",
            "TRIBUTARY__SECRETS__KEY_FILE",
            "No key was created",
        ] {
            assert!(missing.contains(needle), "{needle}: {missing}");
        }

        let cipher = Cipher::new(&[9; 32], source);
        let wrong = wrong_key(&cipher, Some(fingerprint("0123456789abcdef"))).to_string();
        let found = cipher.fingerprint().to_string();
        for needle in [
            "this is not the key this bookkeeping was written with",
            &format!("fingerprint {found}, expected 0123456789abcdef"),
            "/var/lib/tributary/tributary.key",
            "Nothing was written",
            "TRIBUTARY__SECRETS__KEY",
        ] {
            assert!(wrong.contains(needle), "{needle}: {wrong}");
        }
        let unrecorded = wrong_key(&cipher, None).to_string();
        assert!(unrecorded.contains("was not recorded"), "{unrecorded}");
    }
}
