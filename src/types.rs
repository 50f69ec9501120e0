//! Small value types that carry meaning across layers: `Lsn`, `SlotName`, `InstallationId`,
//! `TableName`, ...

use std::fmt;
use std::str::FromStr;

/// A position in the source's write-ahead log.
///
/// Printed and parsed in PostgreSQL's `X/X` form (`16/B374D848`), which is how every
/// server view (`pg_replication_slots`, `pg_current_wal_lsn()`) and wal2json show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(u64);

impl Lsn {
    /// `0/0`: "no position", which `START_REPLICATION` reads as "the slot's confirmed position".
    pub const ZERO: Lsn = Lsn(0);

    pub const fn new(raw: u64) -> Lsn {
        Lsn(raw)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Bytes of WAL between `earlier` and `self`, zero when `earlier` is ahead.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let valid = |part: &str| !part.is_empty() && part.len() <= 8;
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// PostgreSQL's limit on a slot name (NAMEDATALEN - 1).
const SLOT_NAME_MAX: usize = 63;

/// The name of a replication slot: 1 to 63 characters of `a-z`, `0-9` and `_`.
///
/// PostgreSQL enforces the same rule; checking it here means a slot name can be put in a
/// replication command without quoting and an invalid one fails before any connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid replication slot name {0:?}: use 1 to 63 characters from lower-case letters, digits and '_'"
)]
pub struct InvalidSlotName(String);

impl SlotName {
    /// A name for a temporary slot of this process: `tributary_<purpose>_<pid>_<ns>`.
    /// `purpose` is lower-case letters and `_`, a few of them.
    pub fn temporary(purpose: &str) -> SlotName {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        SlotName::new(format!(
            "tributary_{purpose}_{}_{nanos}",
            std::process::id()
        ))
        .expect("temporary slot names are valid")
    }

    pub fn new(name: impl Into<String>) -> Result<SlotName, InvalidSlotName> {
        let name = name.into();
        let ok = (1..=SLOT_NAME_MAX).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(SlotName(name))
        } else {
            Err(InvalidSlotName(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whose slot the name says this is (see [`SlotOwner`]).
    pub fn owner(&self) -> SlotOwner {
        let Some(rest) = self.0.strip_prefix("tributary_") else {
            return SlotOwner::Other;
        };
        let Some((head, tail)) = rest.split_once('_') else {
            return SlotOwner::Other;
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        // An installation id starts with a letter and a connector id is digits, so the
        // two forms cannot be mistaken for each other (nor for the probes' names).
        if digits(head) {
            return if tail.starts_with(|c: char| c.is_ascii_lowercase()) {
                SlotOwner::Legacy
            } else {
                SlotOwner::Other
            };
        }
        match (InstallationId::new(head), tail.split_once('_')) {
            (Ok(installation), Some((id, name))) if digits(id) && !name.is_empty() => {
                SlotOwner::Installation(installation)
            }
            _ => SlotOwner::Other,
        }
    }
}

/// What a slot's name says about who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOwner {
    /// A connector's slot of this tributary installation (branch store bookkeeping).
    Installation(InstallationId),
    /// `tributary_<id>_<name>`: a connector's slot named before names carried the
    /// installation, so any installation's connector `<name>` with id `<id>` may own it.
    Legacy,
    /// Not a connector's slot: another client's, or one of tributary's short-lived probes.
    Other,
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One tributary installation: a bookkeeping schema (a branch store's control database),
/// whichever daemons share it. Drawn at random when the schema is first created
/// (`migrations/0008_installation.sql`), and part of the slot names of its connectors, so
/// that installations replicating one source never take each other's slots.
///
/// 8 characters: a lower-case letter, then letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstallationId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid installation id {0:?}: expected a lower-case letter and 7 lower-case letters or digits"
)]
pub struct InvalidInstallationId(String);

impl InstallationId {
    pub fn new(id: impl Into<String>) -> Result<InstallationId, InvalidInstallationId> {
        let id = id.into();
        let ok = id.len() == 8
            && id.starts_with(|c: char| c.is_ascii_lowercase())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(InstallationId(id))
        } else {
            Err(InvalidInstallationId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A connector's row id in the bookkeeping schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectorId(pub i64);

impl fmt::Display for ConnectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A connector lease's fencing token: drawn from one sequence in the bookkeeping, so a
/// later owner of a connector always holds a larger token than every earlier one. The
/// replica records the largest token that claimed it, and every target transaction checks
/// it (see `sink/replica.rs`): an owner that lost its lease can never commit again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub i64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A connector's name: 1 to 32 characters of `a-z`, `0-9`, `_` and `-`, starting with a
/// letter.
///
/// The name becomes part of the slot name and of the replica database's name as its
/// [`identifier`](ConnectorName::identifier), with `-` as `_`: slot names allow only
/// `a-z`, `0-9` and `_`. Two names with one identifier (`prod-db`, `prod_db`) would share
/// a replica database, so a connector's name [`conflicts`](ConnectorName::conflicts_with)
/// with every other of the same identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectorName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid connector name {0:?}: use 1 to 32 characters from lower-case letters, digits, '_' and '-', starting with a letter"
)]
pub struct InvalidConnectorName(String);

impl ConnectorName {
    pub fn new(name: impl Into<String>) -> Result<ConnectorName, InvalidConnectorName> {
        let name = name.into();
        let ok = (1..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(ConnectorName(name))
        } else {
            Err(InvalidConnectorName(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The replication slot of a connector created now: `tributary_<installation>_<id>_<name>`.
    /// The installation keeps two branch stores replicating one source from sharing (and
    /// stealing) a slot; the id keeps a connector created again under an old name from
    /// resuming the old one's slot. Both come before the name, which is cut at 63 bytes:
    /// it is there for people reading `pg_replication_slots`.
    pub fn slot_name(&self, installation: &InstallationId, id: ConnectorId) -> SlotName {
        let mut name = format!("tributary_{installation}_{id}_{}", self.identifier());
        name.truncate(SLOT_NAME_MAX);
        SlotName::new(name).expect("installation ids and connector names make valid slot names")
    }

    /// The connector's replica database on the branch store.
    pub fn replica_database(&self) -> String {
        format!("{}_replica", self.identifier())
    }

    /// The name as slot and database names carry it: `-` as `_`.
    pub fn identifier(&self) -> String {
        self.0.replace('-', "_")
    }

    /// Whether `other` is another name with the same [`identifier`](Self::identifier):
    /// both connectors would claim one replica database.
    pub fn conflicts_with(&self, other: &ConnectorName) -> bool {
        self != other && self.identifier() == other.identifier()
    }
}

/// A branch: the name of its database on the branch store. Any name PostgreSQL takes for
/// a database (1 to 63 bytes): quotes, spaces, upper case, non-ASCII letters and SQL
/// keywords included, since it is quoted in every statement and percent-encoded in every
/// URL. Only control characters are refused: they would garble every listing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BranchName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid branch name {0:?}: use 1 to 63 bytes (PostgreSQL's limit for a database name) \
     without control characters"
)]
pub struct InvalidBranchName(String);

impl BranchName {
    pub fn new(name: impl Into<String>) -> Result<BranchName, InvalidBranchName> {
        let name = name.into();
        let ok = (1..=63).contains(&name.len()) && !name.chars().any(char::is_control);
        if ok {
            Ok(BranchName(name))
        } else {
            Err(InvalidBranchName(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as one word of a POSIX shell command: as it is when nothing in it is
    /// special to the shell, else in single quotes.
    pub fn shell_word(&self) -> String {
        shell_word(&self.0)
    }
}

/// `text` as one word of a POSIX shell command: as it is when nothing in it is special to
/// the shell, else in single quotes.
pub fn shell_word(text: &str) -> String {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b'+'));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

impl fmt::Display for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A PostgreSQL role name: 1 to 63 bytes (NAMEDATALEN - 1) without control characters,
/// quoted wherever it is used.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid role name {0:?}: use 1 to 63 bytes without control characters")]
pub struct InvalidRoleName(String);

/// What every role tributary creates for a branch is called: this, then the branch's name.
pub const BRANCH_ROLE_PREFIX: &str = "tributary_branch_";

impl RoleName {
    pub fn new(name: impl Into<String>) -> Result<RoleName, InvalidRoleName> {
        let name = name.into();
        let ok = (1..=63).contains(&name.len()) && !name.chars().any(char::is_control);
        if ok {
            Ok(RoleName(name))
        } else {
            Err(InvalidRoleName(name))
        }
    }

    /// The login role tributary creates for `branch`: [`BRANCH_ROLE_PREFIX`] and the
    /// branch's name. A name that would not fit in 63 bytes is cut (at a character
    /// boundary) and ends in `_` and 8 hex digits of the SHA-256 of the whole branch name,
    /// so that long names sharing their first bytes still get distinct roles.
    pub fn for_branch(branch: &BranchName) -> RoleName {
        const MAX: usize = 63;
        let whole = format!("{BRANCH_ROLE_PREFIX}{}", branch.as_str());
        if whole.len() <= MAX {
            return RoleName(whole);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, branch.as_str().as_bytes());
        let suffix: String = digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut cut = MAX - 1 - suffix.len();
        while !whole.is_char_boundary(cut) {
            cut -= 1;
        }
        RoleName(format!("{}_{suffix}", &whole[..cut]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ConnectorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A table by schema and name, as the source's catalog spells them (unquoted).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

/// `schema.name`, unquoted: for messages and logs, not for SQL.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_roles_are_named_after_the_branch_within_63_bytes() {
        let role = |name: &str| RoleName::for_branch(&BranchName::new(name).unwrap()).0;
        let long = "x".repeat(63);
        let long_other = format!("{}y", "x".repeat(62));
        // 21 three-byte characters: 63 bytes, cut inside the prefix's budget.
        let wide = "ブ".repeat(21);
        for (branch, expected) in [
            ("dev", "tributary_branch_dev".to_owned()),
            ("Feature \"X\"", "tributary_branch_Feature \"X\"".to_owned()),
            // 17 + 46 bytes: exactly the limit, not cut.
            (
                &"a".repeat(46),
                format!("tributary_branch_{}", "a".repeat(46)),
            ),
            (
                &"a".repeat(47),
                format!("tributary_branch_{}_", "a".repeat(37)),
            ),
        ] {
            let got = role(branch);
            assert!(got.starts_with(&expected), "{branch}: {got}");
            assert!(got.len() <= 63, "{branch}: {got}");
        }
        assert_eq!(role(&"a".repeat(46)).len(), 63);
        assert_eq!(role(&long).len(), 63);
        assert_ne!(
            role(&long),
            role(&long_other),
            "distinct names, distinct roles"
        );
        assert_eq!(role(&long), role(&long), "the same name, the same role");
        let cut = role(&wide);
        assert!(
            cut.len() <= 63 && cut.starts_with("tributary_branch_ブ"),
            "{cut}"
        );
        assert!(RoleName::new(cut).is_ok());
        for bad in ["", "a\nb", &"r".repeat(64)] {
            assert!(RoleName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn branch_names_are_any_database_name_without_control_characters() {
        for name in [
            "dev",
            "Feature \"X\" for 'Q3'",
            "select",
            "Ünïcödé ブランチ",
            &"a".repeat(63),
        ] {
            assert_eq!(BranchName::new(name).unwrap().as_str(), name);
        }
        assert_eq!(BranchName::new("dev_1").unwrap().shell_word(), "dev_1");
        assert_eq!(
            BranchName::new("it's a $name").unwrap().shell_word(),
            r"'it'\''s a $name'"
        );
        // 22 three-byte characters are 66 bytes: over PostgreSQL's limit.
        for name in [
            "",
            "line\nbreak",
            "tab\there",
            "nul\0",
            &"a".repeat(64),
            &"ブ".repeat(22),
        ] {
            assert!(BranchName::new(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn lsn_round_trips_through_text() {
        for text in ["0/0", "0/1", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap().as_u64(), 1 << 32);
    }

    #[test]
    fn lsn_rejects_malformed_text() {
        for text in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "g/0",
            "0/123456789",
            "-1/0",
            "0/0/0",
        ] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?} should not parse");
        }
    }

    #[test]
    fn connector_names_derive_valid_slot_and_database_names() {
        let name = ConnectorName::new("a".repeat(32)).unwrap();
        let installation = InstallationId::new("k3x9qa7b").unwrap();
        let slot = name.slot_name(&installation, ConnectorId(i64::MAX));
        assert_eq!(slot.as_str().len(), 63, "{slot}");
        assert_eq!(slot.owner(), SlotOwner::Installation(installation.clone()));
        assert_eq!(
            ConnectorName::new("app")
                .unwrap()
                .slot_name(&installation, ConnectorId(7))
                .as_str(),
            "tributary_k3x9qa7b_7_app"
        );
        assert_eq!(
            ConnectorName::new("orders").unwrap().replica_database(),
            "orders_replica"
        );
        let dashed = ConnectorName::new("prod-db").unwrap();
        assert_eq!(
            dashed.slot_name(&installation, ConnectorId(7)).as_str(),
            "tributary_k3x9qa7b_7_prod_db"
        );
        assert_eq!(dashed.replica_database(), "prod_db_replica");
        for (a, b, conflict) in [
            ("prod-db", "prod_db", true),
            ("prod_db", "prod-db", true),
            ("a-b_c", "a_b-c", true),
            ("prod-db", "prod-db", false),
            ("prod-db", "proddb", false),
            ("prod-db", "prod-db2", false),
        ] {
            let (a, b) = (
                ConnectorName::new(a).unwrap(),
                ConnectorName::new(b).unwrap(),
            );
            assert_eq!(a.conflicts_with(&b), conflict, "{a} vs {b}");
        }
        for bad in [
            "",
            "1abc",
            "_x",
            "-x",
            "Orders",
            "with space",
            &"a".repeat(33),
        ] {
            assert!(
                ConnectorName::new(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn slot_names_say_which_installation_made_them() {
        let ours = || SlotOwner::Installation(InstallationId::new("k3x9qa7b").unwrap());
        for (name, owner) in [
            ("tributary_k3x9qa7b_1_app", ours()),
            ("tributary_k3x9qa7b_12_app_x", ours()),
            ("tributary_k3x9qa7b_12_1", ours()),
            ("tributary_1_app", SlotOwner::Legacy),
            ("tributary_42_app_2", SlotOwner::Legacy),
            ("tributary_preflight_1_2", SlotOwner::Other),
            ("tributary_probe_8_8", SlotOwner::Other),
            ("tributary_tail_8_8", SlotOwner::Other),
            ("tributary_k3x9qa7b_app", SlotOwner::Other),
            ("tributary_k3x9qa7b_1_", SlotOwner::Other),
            ("tributary_12345678_1_app", SlotOwner::Other),
            ("tributary_1_2_app", SlotOwner::Other),
            ("tributary_1", SlotOwner::Other),
            ("tributary_", SlotOwner::Other),
            ("debezium", SlotOwner::Other),
            ("tributary", SlotOwner::Other),
        ] {
            assert_eq!(SlotName::new(name).unwrap().owner(), owner, "{name}");
        }
        for bad in [
            "",
            "1abcdefg",
            "abcdefg",
            "abcdefghi",
            "Abcdefgh",
            "abcd_fgh",
        ] {
            assert!(InstallationId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert!(SlotName::new("tributary_orders_1").is_ok());
        assert!(SlotName::new("a".repeat(63)).is_ok());
        for bad in [
            "",
            "Upper",
            "has-dash",
            "sp ace",
            "quote\"",
            &"a".repeat(64),
        ] {
            assert!(SlotName::new(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
