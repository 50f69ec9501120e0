//! Which server of a connection string's host list a session uses, as libpq chooses:
//! the hosts in order (shuffled with `load_balance_hosts=random`), each tried within
//! `connect_timeout`, the first whose role `target_session_attrs` accepts kept. Every
//! client here (SQL sessions, the replication protocol, the branch store's pool) goes
//! through [`first_accepted`], so a string means the same server everywhere.

use std::future::Future;

use super::conninfo::{ConnInfo, Endpoint, SessionAttrs};

/// What a server said about itself, read right after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerRole {
    /// `pg_is_in_recovery()`: a standby.
    pub in_recovery: bool,
    /// `transaction_read_only` as a new session gets it (a standby, or
    /// `default_transaction_read_only`).
    pub read_only: bool,
}

/// The query that reads a [`ServerRole`]: two booleans, as text `t`/`f`.
pub const ROLE_QUERY: &str =
    "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only')::bool";

impl ServerRole {
    /// From [`ROLE_QUERY`]'s two text values.
    pub fn from_text(in_recovery: &str, read_only: &str) -> ServerRole {
        ServerRole {
            in_recovery: in_recovery == "t",
            read_only: read_only == "t" || read_only == "on",
        }
    }

    fn describe(self) -> &'static str {
        match (self.in_recovery, self.read_only) {
            (true, _) => "a standby",
            (false, true) => "a read-only primary",
            (false, false) => "a read-write primary",
        }
    }
}

/// Whether a server of `role` serves `attrs` on pass `pass`: `prefer-standby` takes only
/// standbys on the first pass and any server on the second, as libpq does.
pub fn accepts(attrs: SessionAttrs, role: ServerRole, pass: u8) -> bool {
    match attrs {
        SessionAttrs::Any => true,
        SessionAttrs::ReadWrite => !role.read_only,
        SessionAttrs::ReadOnly => role.read_only,
        SessionAttrs::Primary => !role.in_recovery,
        SessionAttrs::Standby => role.in_recovery,
        SessionAttrs::PreferStandby => pass > 0 || role.in_recovery,
    }
}

/// Why no server of the list was used: per server, its error or the role it has.
#[derive(Debug)]
pub struct NoServer<E> {
    pub attrs: SessionAttrs,
    pub tried: Vec<(Endpoint, Refusal<E>)>,
}

#[derive(Debug)]
pub enum Refusal<E> {
    Failed(E),
    Role(ServerRole),
}

impl<E: std::fmt::Display> NoServer<E> {
    /// One line per server: what happened there.
    pub fn reasons(&self) -> String {
        self.tried
            .iter()
            .map(|(endpoint, refusal)| match refusal {
                Refusal::Failed(e) => format!("{}: {e}", endpoint.target()),
                Refusal::Role(role) => format!(
                    "{}: is {}, and target_session_attrs={} wants another",
                    endpoint.target(),
                    role.describe(),
                    self.attrs.as_str()
                ),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The error of a single server, for the messages a one-host string always had.
    pub fn into_single(mut self) -> Result<E, NoServer<E>> {
        match self.tried.as_slice() {
            [(_, Refusal::Failed(_))] => match self.tried.pop() {
                Some((_, Refusal::Failed(e))) => Ok(e),
                _ => unreachable!("matched above"),
            },
            _ => Err(self),
        }
    }

    /// Whether trying again may find a server: one refused only for its role (a
    /// promotion in progress), or one whose error `transient` deems passing.
    pub fn is_transient(&self, transient: impl Fn(&E) -> bool) -> bool {
        self.tried.iter().any(|(_, refusal)| match refusal {
            Refusal::Role(_) => true,
            Refusal::Failed(e) => transient(e),
        })
    }
}

/// Connects to the first server `info` allows. `connect` opens a session to one server
/// and, when asked (`true`), also reads its [`ServerRole`].
pub async fn first_accepted<C, E, F, Fut>(
    info: &ConnInfo,
    mut connect: F,
) -> Result<(C, Endpoint), NoServer<E>>
where
    F: FnMut(Endpoint, bool) -> Fut,
    Fut: Future<Output = Result<(C, Option<ServerRole>), E>>,
{
    let attrs = info.session_attrs;
    let check = attrs != SessionAttrs::Any;
    let endpoints = info.endpoints_to_try();
    let mut tried = Vec::new();
    let passes = if attrs == SessionAttrs::PreferStandby {
        2
    } else {
        1
    };
    for pass in 0..passes {
        for endpoint in &endpoints {
            // A server that failed outright is not tried again on the second pass.
            if pass > 0
                && tried
                    .iter()
                    .any(|(e, r)| e == endpoint && matches!(r, Refusal::Failed(_)))
            {
                continue;
            }
            match connect(endpoint.clone(), check).await {
                Ok((session, role)) => match role {
                    Some(role) if !accepts(attrs, role, pass) => {
                        tried.push((endpoint.clone(), Refusal::Role(role)))
                    }
                    _ => return Ok((session, endpoint.clone())),
                },
                Err(e) => tried.push((endpoint.clone(), Refusal::Failed(e))),
            }
        }
    }
    Err(NoServer { attrs, tried })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_server_serves_which_attrs() {
        let primary = ServerRole {
            in_recovery: false,
            read_only: false,
        };
        let read_only_primary = ServerRole {
            in_recovery: false,
            read_only: true,
        };
        let standby = ServerRole {
            in_recovery: true,
            read_only: true,
        };
        use SessionAttrs::*;
        // (attrs, role, pass, accepted)
        let table = [
            (Any, standby, 0, true),
            (ReadWrite, primary, 0, true),
            (ReadWrite, read_only_primary, 0, false),
            (ReadWrite, standby, 0, false),
            (ReadOnly, standby, 0, true),
            (ReadOnly, read_only_primary, 0, true),
            (ReadOnly, primary, 0, false),
            (Primary, read_only_primary, 0, true),
            (Primary, standby, 0, false),
            (Standby, standby, 0, true),
            (Standby, read_only_primary, 0, false),
            (PreferStandby, standby, 0, true),
            (PreferStandby, primary, 0, false),
            (PreferStandby, primary, 1, true),
        ];
        for (attrs, role, pass, accepted) in table {
            assert_eq!(
                accepts(attrs, role, pass),
                accepted,
                "{attrs:?} {role:?} pass {pass}"
            );
        }
    }

    fn info(text: &str) -> ConnInfo {
        ConnInfo::parse(text).unwrap()
    }

    /// Servers by port: `Ok(role)` answers, `Err` does not.
    async fn choose(
        text: &str,
        servers: &[(u16, Result<ServerRole, &'static str>)],
    ) -> Result<u16, NoServer<&'static str>> {
        let info = info(text);
        first_accepted(&info, |endpoint, check| {
            let found = servers.iter().find(|(p, _)| *p == endpoint.port).unwrap().1;
            async move { found.map(|role| (endpoint.port, check.then_some(role))) }
        })
        .await
        .map(|(port, _)| port)
    }

    #[tokio::test]
    async fn the_first_accepted_server_in_order_is_used() {
        let primary = ServerRole {
            in_recovery: false,
            read_only: false,
        };
        let standby = ServerRole {
            in_recovery: true,
            read_only: true,
        };
        let two = "host=a,b port=1,2 user=u target_session_attrs=";
        assert_eq!(
            choose(
                &format!("{two}read-write"),
                &[(1, Ok(standby)), (2, Ok(primary))]
            )
            .await
            .unwrap(),
            2
        );
        assert_eq!(
            choose(&format!("{two}any"), &[(1, Ok(standby)), (2, Ok(primary))])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            choose(
                &format!("{two}standby"),
                &[(1, Ok(primary)), (2, Ok(standby))]
            )
            .await
            .unwrap(),
            2
        );
        assert_eq!(
            choose(
                &format!("{two}prefer-standby"),
                &[(1, Ok(primary)), (2, Err("down"))]
            )
            .await
            .unwrap(),
            1,
            "no standby answers: any server"
        );
        assert_eq!(
            choose(
                &format!("{two}read-write"),
                &[(1, Err("down")), (2, Ok(primary))]
            )
            .await
            .unwrap(),
            2
        );

        let none = choose(
            &format!("{two}read-write"),
            &[(1, Err("refused")), (2, Ok(standby))],
        )
        .await
        .unwrap_err();
        assert_eq!(
            none.reasons(),
            "a:1: refused; b:2: is a standby, and target_session_attrs=read-write wants another"
        );
        assert!(none.is_transient(|_| false), "a promotion may be under way");
        let down = choose(
            &format!("{two}any"),
            &[(1, Err("bad password")), (2, Err("bad password"))],
        )
        .await
        .unwrap_err();
        assert!(!down.is_transient(|_| false));
        let single = choose("host=a port=1 user=u", &[(1, Err("refused"))])
            .await
            .unwrap_err();
        assert_eq!(single.into_single().unwrap(), "refused");
    }
}
