//! Profile decisions as pure functions: (event, stored profile, now) in, the profile to
//! store or the response to publish out.

use saga_events::{UserProfileRequested, UserProfileResponse, UserRegistered};
use serde::{Deserialize, Serialize};
use switchyard_sdk::{QueryError, keys};

/// Query `profile`: a user's profile.
pub const PROFILE_QUERY: &str = "profile";

/// Arguments of queries about one user.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ByUser {
    pub username: String,
}

/// Answers [`PROFILE_QUERY`]: the stored profile, if the user registered.
pub fn profile(stored: Option<Profile>, username: &str) -> Result<Profile, QueryError> {
    stored.ok_or_else(|| QueryError::NotFound(format!("user {username:?} has no profile")))
}

/// Storage key of a user's profile.
pub fn profile_key(username: &str) -> String {
    format!("profile/{}", keys::segment(username))
}

/// A profile under [`profile_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub username: String,
    pub email: String,
    /// How to address the user. Registration carries no name, so it starts as the
    /// username.
    pub display_name: String,
    pub registered_at: i64,
    /// Which part of the system registered the user (`UserRegistered.source`).
    pub source: String,
    /// How the user wants to be notified: channels, comma separated (`email`, `webhook`,
    /// `log`); absent: the notifier's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
}

/// Creates the profile of a new user; `None` when one exists (a repeated registration
/// must not overwrite it).
pub fn create_profile(existing: Option<&Profile>, reg: &UserRegistered) -> Option<Profile> {
    existing.is_none().then(|| Profile {
        username: reg.username.clone(),
        email: reg.email.clone(),
        display_name: reg.username.clone(),
        registered_at: reg.registered_at,
        source: reg.source.clone(),
        notify: reg.notify.clone(),
    })
}

/// What a profile request does.
#[derive(Debug, Clone, PartialEq)]
pub enum ProfileDecision {
    /// Publish this answer.
    Answer(UserProfileResponse),
    /// No profile yet, but the registration may still be on its way (it travels on
    /// another topic): retry rather than answer "not found" and lose the notification.
    Wait(String),
}

/// Decides a profile request: the profile when there is one; with none, wait while
/// `may_wait` (see [`switchyard_sdk::late`]), then answer `found: false`.
pub fn decide(profile: Option<&Profile>, req: &UserProfileRequested, now: i64, may_wait: bool) -> ProfileDecision {
    if profile.is_none() && may_wait {
        return ProfileDecision::Wait(format!(
            "no profile for user {:?} yet: waiting for users.registered",
            req.username
        ));
    }
    ProfileDecision::Answer(respond(profile, req, now))
}

/// Answers a profile request, correlated by the same requestId.
pub fn respond(profile: Option<&Profile>, req: &UserProfileRequested, now: i64) -> UserProfileResponse {
    UserProfileResponse {
        request_id: req.request_id.clone(),
        username: req.username.clone(),
        found: profile.is_some(),
        email: profile.map(|p| p.email.clone()),
        display_name: profile.map(|p| p.display_name.clone()),
        responded_at: now,
        notify: profile.and_then(|p| p.notify.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn registered() -> UserRegistered {
        UserRegistered {
            username: "alice".into(),
            email: "alice@example.org".into(),
            registered_at: NOW,
            source: "auth".into(),
            notify: Some("email".into()),
        }
    }

    fn request(username: &str) -> UserProfileRequested {
        UserProfileRequested {
            request_id: "req-1".into(),
            username: username.into(),
            reply_to: "notif".into(),
            requested_at: NOW,
        }
    }

    #[test]
    fn creates_a_profile_once() {
        let profile = create_profile(None, &registered()).unwrap();
        assert_eq!(profile.display_name, "alice");
        assert_eq!(profile.registered_at, NOW);
        let changed = UserRegistered {
            email: "new@example.org".into(),
            ..registered()
        };
        assert_eq!(create_profile(Some(&profile), &changed), None);
    }

    #[test]
    fn responds_with_the_profile() {
        let profile = create_profile(None, &registered()).unwrap();
        let resp = respond(Some(&profile), &request("alice"), NOW + 3);
        assert_eq!(
            resp,
            UserProfileResponse {
                request_id: "req-1".into(),
                username: "alice".into(),
                found: true,
                email: Some("alice@example.org".into()),
                display_name: Some("alice".into()),
                responded_at: NOW + 3,
                notify: Some("email".into()),
            }
        );
    }

    #[test]
    fn responds_not_found_for_unknown_users() {
        let resp = respond(None, &request("bob"), NOW);
        assert!(!resp.found);
        assert_eq!((resp.email, resp.display_name), (None, None));
        assert_eq!(resp.request_id, "req-1");
    }

    #[test]
    fn profile_query_answers_the_profile_or_not_found() {
        let stored = create_profile(None, &registered()).unwrap();
        assert_eq!(
            serde_json::to_value(profile(Some(stored), "alice").unwrap()).unwrap(),
            serde_json::json!({"username": "alice", "email": "alice@example.org", "displayName": "alice",
                               "registeredAt": NOW, "source": "auth", "notify": "email"})
        );
        assert!(matches!(profile(None, "bob"), Err(QueryError::NotFound(why)) if why.contains("bob")));
    }

    #[test]
    fn a_request_that_overtakes_the_registration_waits_for_it() {
        assert!(matches!(
            decide(None, &request("bob"), NOW, true),
            ProfileDecision::Wait(why) if why.contains("bob")
        ));
        let profile = create_profile(None, &registered()).unwrap();
        assert!(matches!(
            decide(Some(&profile), &request("alice"), NOW, true),
            ProfileDecision::Answer(r) if r.found
        ));
        assert!(matches!(
            decide(None, &request("bob"), NOW, false),
            ProfileDecision::Answer(r) if !r.found
        ));
    }

    #[test]
    fn profile_keys_escape_user_text() {
        assert_eq!(profile_key("a/b"), "profile/a%2Fb");
    }
}
