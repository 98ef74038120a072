//! Teams against the example runbooks: who may start what.

use firebreak_matcher::{Refusal, RunbookSet, Teams};

use crate::data_dir;

fn loaded() -> (Teams, RunbookSet) {
    let teams = Teams::load(&data_dir().join("teams.yaml")).expect("teams load");
    let set = RunbookSet::load_dir_with_teams(&data_dir(), Some(&teams)).expect("runbooks load");
    (teams, set)
}

#[test]
fn members_of_the_owner_team_may_trigger() {
    let (teams, set) = loaded();
    let runbook = set.get("model-error-rate").unwrap();
    let actor = teams.member_by_token("ann-token-0001").unwrap();
    assert_eq!(teams.can_trigger(actor, runbook), Ok(()));
    let (_, member) = teams.authorize_chat_id("U100", runbook).unwrap();
    assert_eq!(member.name, "ann");
    assert!(set.teams().is_some());
}

#[test]
fn other_teams_and_strangers_are_refused() {
    let (teams, set) = loaded();
    let runbook = set.get("model-recovered").unwrap();
    let bob = teams.member_by_token("bob-token-0002").unwrap();
    let refusal = teams.can_trigger(bob, runbook).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "bob (team payments) may not start runbook model-recovered: it belongs to team ml-platform"
    );
    assert_eq!(
        teams
            .authorize_token("bob-token-0002", runbook)
            .unwrap_err(),
        refusal
    );
    assert_eq!(refusal.http_status(), 403);
    let unknown = teams.authorize_token("guess", runbook).unwrap_err();
    assert_eq!(unknown, Refusal::UnknownToken);
    assert_eq!(unknown.http_status(), 401);
    assert_eq!(
        teams.authorize_chat_id("U999", runbook).unwrap_err(),
        Refusal::UnknownChatId("U999".into())
    );
}

#[test]
fn single_tenant_mode_has_no_teams() {
    let set = RunbookSet::load_dir(&data_dir()).unwrap();
    assert!(set.teams().is_none());
    assert_eq!(set.len(), 2);
    let names: Vec<&str> = set.iter().map(|r| r.manifest.name.as_str()).collect();
    assert_eq!(names, ["model-error-rate", "model-recovered"]);
}
