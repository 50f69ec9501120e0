//! Triggers the source enables `ALWAYS` or `REPLICA`: held disabled in the replica,
//! enabled again in each branch.
//!
//! Apply sessions run with `session_replication_role = replica`, which keeps ordinary
//! (`ENABLE`, `tgenabled = 'O'`) triggers from firing, but `ALWAYS` ('A') and `REPLICA`
//! ('R') triggers fire under it: an audit trigger would write its rows a second time
//! (the source's arrive by replication too), a timestamp trigger would rewrite values.
//! No setting keeps them quiet, and disabling them inside each target transaction would
//! lock every such table on every commit. So the replica keeps them disabled ('D') and
//! records the source's state in `tributary.trigger_states`, by trigger OID (a rename
//! keeps it, `CREATE DATABASE … TEMPLATE` copies it); a branch, a writable copy where the
//! application's triggers must work as on the source, enables them again ([`release`]).
//!
//! They are held after the snapshot's post-data (which creates the triggers with the
//! source's states; the rows were copied before, so nothing fired), at each claim of the
//! replica (replicas made before this existed), and around every replayed schema change:
//! the triggers whose state the statement changed are held or forgotten ([`actions`]).

use tokio_postgres::Client;

/// The table of held states; created with the progress table (`replica.rs`).
pub(crate) const TABLE_DDL: &str = "\
    CREATE TABLE IF NOT EXISTS tributary.trigger_states (\n\
        trigger_oid oid PRIMARY KEY,\n\
        enabled text NOT NULL CHECK (enabled IN ('A', 'R'))\n\
    );\n\
    COMMENT ON TABLE tributary.trigger_states IS \
        'tributary: triggers enabled ALWAYS (A) or REPLICA (R) on the source, kept disabled \
         here so that applying changes does not fire them; a branch enables them again';";

/// A user trigger (not one of a constraint's internal ones) as the replica has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trigger {
    pub oid: u32,
    /// `tgenabled`: O (origin), R (replica), A (always), D (disabled).
    pub enabled: String,
    /// The source's state recorded for it, when held.
    pub held: Option<String>,
}

async fn triggers(client: &Client) -> Result<Vec<Trigger>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT t.oid, t.tgenabled::text, s.enabled \
               FROM pg_catalog.pg_trigger t \
               LEFT JOIN tributary.trigger_states s ON s.trigger_oid = t.oid \
              WHERE NOT t.tgisinternal",
            &[],
        )
        .await?
        .iter()
        .map(|row| Trigger {
            oid: row.get(0),
            enabled: row.get(1),
            held: row.get(2),
        })
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Record the state ('A' or 'R') and disable the trigger.
    Hold(u32, String),
    /// The replica's state is the source's now: drop the record.
    Forget(u32),
}

/// What to do with each trigger. `unheld`: the held triggers were enabled again
/// ([`unhold`]) before a schema change ran, so every state is the source's (a disabled
/// one was disabled by the source); otherwise a disabled trigger with a record is one
/// held here.
pub(crate) fn actions(triggers: &[Trigger], unheld: bool) -> Vec<Action> {
    triggers
        .iter()
        .filter_map(|t| match (t.enabled.as_str(), &t.held) {
            ("A" | "R", _) => Some(Action::Hold(t.oid, t.enabled.clone())),
            ("D", Some(_)) if !unheld => None,
            (_, Some(_)) => Some(Action::Forget(t.oid)),
            (_, None) => None,
        })
        .collect()
}

/// Holds every trigger that would fire under apply ([`actions`]), in the session's open
/// transaction if there is one; records of dropped triggers go too.
pub(crate) async fn hold(client: &Client, unheld: bool) -> Result<(), tokio_postgres::Error> {
    for action in actions(&triggers(client).await?, unheld) {
        match action {
            Action::Hold(oid, state) => {
                client
                    .execute(
                        "INSERT INTO tributary.trigger_states VALUES ($1, $2) \
                         ON CONFLICT (trigger_oid) DO UPDATE SET enabled = $2",
                        &[&oid, &state],
                    )
                    .await?;
                let disable: String = client
                    .query_one(
                        "SELECT pg_catalog.format('ALTER TABLE %s DISABLE TRIGGER %I', \
                                tgrelid::pg_catalog.regclass, tgname) \
                           FROM pg_catalog.pg_trigger WHERE oid = $1",
                        &[&oid],
                    )
                    .await?
                    .get(0);
                client.batch_execute(&disable).await?;
            }
            Action::Forget(oid) => {
                client
                    .execute(
                        "DELETE FROM tributary.trigger_states WHERE trigger_oid = $1",
                        &[&oid],
                    )
                    .await?;
            }
        }
    }
    client
        .execute(
            "DELETE FROM tributary.trigger_states s WHERE NOT EXISTS \
                 (SELECT FROM pg_catalog.pg_trigger t WHERE t.oid = s.trigger_oid)",
            &[],
        )
        .await?;
    Ok(())
}

/// Enables the held triggers as the source has them (records stay): before a replayed
/// schema change, so that it meets the source's states (`DISABLE TRIGGER` of a held one
/// changes nothing otherwise), and in a branch.
pub(crate) async fn unhold(client: &Client) -> Result<(), tokio_postgres::Error> {
    let statements = client
        .query(
            "SELECT pg_catalog.format('ALTER TABLE %s ENABLE %s TRIGGER %I', \
                    t.tgrelid::pg_catalog.regclass, \
                    CASE s.enabled WHEN 'A' THEN 'ALWAYS' ELSE 'REPLICA' END, t.tgname) \
               FROM tributary.trigger_states s \
               JOIN pg_catalog.pg_trigger t ON t.oid = s.trigger_oid \
              WHERE t.tgenabled = 'D'",
            &[],
        )
        .await?;
    for row in statements {
        client.batch_execute(row.get(0)).await?;
    }
    Ok(())
}

/// In a branch: enables the held triggers as the source has them, and forgets them (the
/// branch is no replica). A replica made before the table existed has nothing to release.
pub async fn release(client: &Client) -> Result<(), tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('tributary.trigger_states') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(());
    }
    unhold(client).await?;
    client
        .batch_execute("TRUNCATE tributary.trigger_states")
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    fn t(oid: u32, enabled: &str, held: Option<&str>) -> Trigger {
        Trigger {
            oid,
            enabled: enabled.into(),
            held: held.map(Into::into),
        }
    }

    #[test]
    fn triggers_that_fire_under_apply_are_held() {
        let triggers = [
            t(1, "O", None),      // does not fire under session_replication_role = replica
            t(2, "D", None),      // disabled on the source
            t(3, "A", None),      // created ENABLE ALWAYS
            t(4, "R", None),      // created ENABLE REPLICA
            t(5, "D", Some("A")), // held
            t(6, "A", Some("R")), // held, then enabled ALWAYS by a schema change
            t(7, "O", Some("A")), // held, then enabled (ORIGIN) by a schema change
        ];
        // A sweep (after the snapshot, at a claim): a disabled trigger with a record is
        // one held here.
        assert_eq!(
            actions(&triggers, false),
            [
                Hold(3, "A".into()),
                Hold(4, "R".into()),
                Hold(6, "A".into()),
                Forget(7)
            ]
        );
        // After a schema change met the source's states: disabled means the source
        // disabled it.
        assert_eq!(
            actions(&triggers, true),
            [
                Hold(3, "A".into()),
                Hold(4, "R".into()),
                Forget(5),
                Hold(6, "A".into()),
                Forget(7)
            ]
        );
    }
}
