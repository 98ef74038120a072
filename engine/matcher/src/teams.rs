//! Teams (tenancy): who belongs to which team, which namespaces each team owns, and the
//! checks built on that. Start at [`Teams::from_str`] / [`Teams::load`].
//!
//! ```yaml
//! teams:
//!   - name: ml-platform
//!     namespaces: [ml-serving, team-a]
//!     slack_channel: C0ML           # where notifications go (optional)
//!     mattermost_channel: 4xp9mlchan # (optional)
//!     deploy_policy:                 # checked before firebreak deploys (optional)
//!       readiness_probe: true
//!       resources: true              # cpu and memory requests and limits
//!       registries: [registry.example.com/ml/]
//!     members:
//!       - name: ann
//!         tokens: [s3cret-token]      # API bearer tokens
//!         chat_ids: ["U024BE7LH", 42]  # chat user ids (numbers are read as text)
//! ```
//!
//! **Single-tenant mode** (no teams file configured): a runbook's `team` is a free label
//! used in audit records and NATS subjects; namespaces are not checked against any team;
//! manual triggers are not checked for membership, so whoever passes the ingest's own
//! authentication may start any runbook. With a teams file: every runbook's team must be
//! listed and its namespaces must be within the team's ([`crate::RunbookSet::load_dir_with_teams`]),
//! and only members of a runbook's team may start it by hand ([`Teams::can_trigger`]).

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::Runbook;
use crate::diag::{Diagnostic, MAX_YAML_BYTES, parse_yaml, read_capped};

mod raw {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub teams: Vec<Team>,
        #[serde(default)]
        pub freezes: Vec<crate::guards::raw::Freeze>,
        pub blast_radius: Option<crate::guards::BlastRadiusSpec>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Team {
        pub name: Spanned<String>,
        pub namespaces: Vec<String>,
        #[serde(default)]
        pub members: Vec<Member>,
        #[serde(default)]
        pub cluster_actions: Vec<Spanned<String>>,
        pub slack_channel: Option<String>,
        pub mattermost_channel: Option<String>,
        pub deploy_policy: Option<crate::guards::DeployPolicy>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Member {
        pub name: Spanned<String>,
        #[serde(default)]
        pub tokens: Vec<Spanned<String>>,
        #[serde(default)]
        pub chat_ids: Vec<Spanned<String>>,
    }
}

/// A team: a name, the namespaces it owns, its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    /// Unique team name, as runbooks' `team` refer to it.
    pub name: String,
    /// Namespaces the team's runbooks may act on.
    pub namespaces: Vec<String>,
    /// People (or bots) of the team.
    pub members: Vec<Member>,
    /// Mutating actions on the whole cluster (no namespace) the team's runbooks may take,
    /// by qualified name (`k8s::cordon`, `am::silence`); every other one is refused.
    pub cluster_actions: Vec<String>,
    /// Slack channel id the team's notifications go to.
    pub slack_channel: Option<String>,
    /// Mattermost channel id the team's notifications go to.
    pub mattermost_channel: Option<String>,
    /// What the team's Deployments must look like before firebreak deploys them.
    pub deploy_policy: Option<crate::guards::DeployPolicy>,
}

/// A member of a team. `Debug` does not print tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Member {
    /// The name recorded as `actor` in audit records.
    pub name: String,
    /// API bearer tokens that authenticate this member.
    pub tokens: Vec<String>,
    /// Chat user ids of this member.
    pub chat_ids: Vec<String>,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("chat_ids", &self.chat_ids)
            .finish()
    }
}

/// Why someone may not do something; each refusal is audited by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The actor is not a member of the runbook's owner team.
    #[error(
        "{actor} (team {actor_team}) may not start runbook {runbook}: it belongs to team {owner}"
    )]
    NotOwnerTeam {
        /// Who asked.
        actor: String,
        /// The actor's team.
        actor_team: String,
        /// The runbook asked for.
        runbook: String,
        /// The runbook's team.
        owner: String,
    },
    /// No member has this token.
    #[error("unknown api token")]
    UnknownToken,
    /// No member has this chat id.
    #[error("chat user {0} is not a member of any team")]
    UnknownChatId(String),
}

impl Refusal {
    /// The HTTP status for this refusal: 401 for an unknown token, 403 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::UnknownToken => 401,
            Refusal::NotOwnerTeam { .. } | Refusal::UnknownChatId(_) => 403,
        }
    }
}

/// All teams, loaded from a teams file.
#[derive(Debug, Clone, Default)]
pub struct Teams {
    teams: Vec<Team>,
    /// Freeze windows (see [`crate::guards`]).
    pub freezes: Vec<crate::guards::Freeze>,
    /// Caps on mutating actions in a sliding window.
    pub blast_radius: Option<crate::guards::BlastRadiusSpec>,
}

impl Teams {
    /// Reads and checks a teams file. A missing file is an error here: whether a missing
    /// file means single-tenant mode is the caller's decision (see the module docs).
    pub fn load(path: &Path) -> Result<Teams, Vec<Diagnostic>> {
        let text = read_capped(path, MAX_YAML_BYTES).map_err(|d| vec![d])?;
        Teams::parse(path, &text)
    }

    /// Parses a teams file given as text (`file` is for diagnostics only).
    pub fn parse(file: &Path, text: &str) -> Result<Teams, Vec<Diagnostic>> {
        let raw: raw::File = parse_yaml(file, text).map_err(|d| vec![d])?;
        let mut diags = Vec::new();
        let mut names = HashSet::new();
        let mut tokens = HashSet::new();
        let mut chat_ids = HashSet::new();
        let mut teams = Vec::new();
        let freezes = crate::guards::check_freezes(file, raw.freezes, &mut diags);
        for team in raw.teams {
            if !names.insert(team.name.value.clone()) {
                diags.push(Diagnostic::spanned(
                    file,
                    &team.name,
                    format!("duplicate team {:?}", team.name.value),
                ));
            }
            let mut members = Vec::new();
            for member in team.members {
                for token in &member.tokens {
                    if token.value.trim().len() < 8 {
                        diags.push(Diagnostic::spanned(
                            file,
                            token,
                            format!(
                                "token of {} is shorter than 8 characters",
                                member.name.value
                            ),
                        ));
                    } else if !tokens.insert(token.value.clone()) {
                        diags.push(Diagnostic::spanned(
                            file,
                            token,
                            format!(
                                "token of {} is already used by another member",
                                member.name.value
                            ),
                        ));
                    }
                }
                for id in &member.chat_ids {
                    if !chat_ids.insert(id.value.clone()) {
                        diags.push(Diagnostic::spanned(
                            file,
                            id,
                            format!("chat id {:?} is already used by another member", id.value),
                        ));
                    }
                }
                members.push(Member {
                    name: member.name.value,
                    tokens: member.tokens.into_iter().map(|t| t.value).collect(),
                    chat_ids: member.chat_ids.into_iter().map(|t| t.value).collect(),
                });
            }
            for action in &team.cluster_actions {
                let qualified = action.value.split_once("::");
                if !qualified.is_some_and(|(c, a)| !c.is_empty() && !a.is_empty()) {
                    diags.push(Diagnostic::spanned(
                        file,
                        action,
                        format!(
                            "cluster action {:?} is not a qualified action name like k8s::cordon",
                            action.value
                        ),
                    ));
                }
            }
            teams.push(Team {
                name: team.name.value,
                namespaces: team.namespaces,
                members,
                cluster_actions: team.cluster_actions.into_iter().map(|a| a.value).collect(),
                slack_channel: team.slack_channel,
                mattermost_channel: team.mattermost_channel,
                deploy_policy: team.deploy_policy,
            });
        }
        if diags.is_empty() {
            Ok(Teams {
                teams,
                freezes,
                blast_radius: raw.blast_radius,
            })
        } else {
            Err(diags)
        }
    }

    /// Parses a teams file given as text, with `teams.yaml` as the file name in diagnostics.
    #[allow(clippy::should_implement_trait)] // returns diagnostics, not a FromStr error
    pub fn from_str(text: &str) -> Result<Teams, Vec<Diagnostic>> {
        Teams::parse(Path::new("teams.yaml"), text)
    }

    /// Every team, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Team> {
        self.teams.iter()
    }

    /// The team of this name.
    pub fn get(&self, name: &str) -> Option<&Team> {
        self.teams.iter().find(|t| t.name == name)
    }

    /// The member owning this API token. Compares every token in constant time per byte,
    /// so the answer's timing does not reveal how much of a token was right.
    pub fn member_by_token(&self, token: &str) -> Option<(&Team, &Member)> {
        let mut found = None;
        for team in &self.teams {
            for member in &team.members {
                for known in &member.tokens {
                    if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                        found = Some((team, member));
                    }
                }
            }
        }
        found
    }

    /// The member with this chat user id.
    /// The teams `person` (a member name) belongs to.
    pub fn teams_of(&self, person: &str) -> Vec<String> {
        self.iter()
            .filter(|t| t.members.iter().any(|m| m.name == person))
            .map(|t| t.name.clone())
            .collect()
    }

    pub fn member_by_chat_id(&self, chat_id: &str) -> Option<(&Team, &Member)> {
        self.teams.iter().find_map(|team| {
            team.members
                .iter()
                .find(|m| m.chat_ids.iter().any(|id| id == chat_id))
                .map(|m| (team, m))
        })
    }

    /// Whether `actor` may start `runbook` by hand: only members of its owner team may.
    pub fn can_trigger(&self, actor: (&Team, &Member), runbook: &Runbook) -> Result<(), Refusal> {
        let (team, member) = actor;
        if team.name == runbook.manifest.team {
            Ok(())
        } else {
            Err(Refusal::NotOwnerTeam {
                actor: member.name.clone(),
                actor_team: team.name.clone(),
                runbook: runbook.manifest.name.clone(),
                owner: runbook.manifest.team.clone(),
            })
        }
    }

    /// Token lookup and [`Teams::can_trigger`] in one: the member, or why not.
    pub fn authorize_token(
        &self,
        token: &str,
        runbook: &Runbook,
    ) -> Result<(&Team, &Member), Refusal> {
        let actor = self.member_by_token(token).ok_or(Refusal::UnknownToken)?;
        self.can_trigger(actor, runbook)?;
        Ok(actor)
    }

    /// Chat id lookup and [`Teams::can_trigger`] in one: the member, or why not.
    pub fn authorize_chat_id(
        &self,
        chat_id: &str,
        runbook: &Runbook,
    ) -> Result<(&Team, &Member), Refusal> {
        let actor = self
            .member_by_chat_id(chat_id)
            .ok_or_else(|| Refusal::UnknownChatId(chat_id.to_owned()))?;
        self.can_trigger(actor, runbook)?;
        Ok(actor)
    }
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEAMS: &str = r#"
teams:
  - name: ml-platform
    namespaces: [ml-serving, team-a]
    members:
      - name: ann
        tokens: [ann-token-123]
        chat_ids: ["U024BE7LH", 42]
  - name: payments
    namespaces: [payments]
    members:
      - name: bob
        tokens: [bob-token-456]
"#;

    #[test]
    fn lookups_by_token_and_chat_id() {
        let teams = Teams::from_str(TEAMS).unwrap();
        let (team, member) = teams.member_by_token("ann-token-123").unwrap();
        assert_eq!(
            (team.name.as_str(), member.name.as_str()),
            ("ml-platform", "ann")
        );
        assert!(teams.member_by_token("ann-token-12").is_none());
        assert!(teams.member_by_token("").is_none());
        assert_eq!(teams.member_by_chat_id("42").unwrap().1.name, "ann");
        assert_eq!(teams.member_by_chat_id("U024BE7LH").unwrap().1.name, "ann");
        assert!(teams.member_by_chat_id("43").is_none());
        assert_eq!(teams.get("payments").unwrap().namespaces, ["payments"]);
        assert_eq!(teams.iter().count(), 2);
    }

    #[test]
    fn debug_does_not_print_tokens() {
        let teams = Teams::from_str(TEAMS).unwrap();
        let printed = format!("{teams:?}");
        assert!(!printed.contains("ann-token-123"), "{printed}");
        assert!(printed.contains("1 redacted"));
    }

    #[test]
    fn problems_point_at_their_line() {
        let bad = r#"teams:
  - name: a
    namespaces: [x]
    members:
      - name: ann
        tokens: [same-token-1, short]
  - name: a
    namespaces: [y]
    members:
      - name: bob
        tokens: [same-token-1]
        chat_ids: [7, 7]
"#;
        let diags = Teams::from_str(bad).unwrap_err();
        let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "teams.yaml:6:32: token of ann is shorter than 8 characters",
                "teams.yaml:7:11: duplicate team \"a\"",
                "teams.yaml:11:18: token of bob is already used by another member",
                "teams.yaml:12:23: chat id \"7\" is already used by another member",
            ]
        );
    }

    #[test]
    fn cluster_actions_are_granted_by_qualified_name() {
        let teams = Teams::from_str(
            "teams:\n  - name: platform\n    namespaces: [infra]\n    cluster_actions: [k8s::cordon, am::silence]\n",
        )
        .unwrap();
        assert_eq!(
            teams.get("platform").unwrap().cluster_actions,
            vec!["k8s::cordon", "am::silence"]
        );
        let diags = Teams::from_str(
            "teams:\n  - name: a\n    namespaces: [x]\n    cluster_actions: [cordon]\n",
        )
        .unwrap_err();
        assert_eq!(diags.len(), 1);
        assert!(
            diags[0]
                .to_string()
                .contains("\"cordon\" is not a qualified action name"),
            "{}",
            diags[0]
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_position() {
        let diags = Teams::from_str("teams:\n  - name: a\n    namespace: [x]\n").unwrap_err();
        assert_eq!(diags.len(), 1);
        assert_eq!((diags[0].line, diags[0].column), (3, 5));
        assert!(
            diags[0].message.contains("unknown field `namespace`"),
            "{}",
            diags[0]
        );
    }

    #[test]
    fn load_reports_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("teams.yaml");
        let diags = Teams::load(&path).unwrap_err();
        assert!(diags[0].message.starts_with("cannot read"), "{}", diags[0]);
        std::fs::write(&path, TEAMS).unwrap();
        assert_eq!(Teams::load(&path).unwrap().iter().count(), 2);
    }
}
