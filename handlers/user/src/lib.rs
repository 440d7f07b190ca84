//! The user profile component (ADR-0003 `mini_user`): wasm glue around [`logic`].
//!
//! Consumes `users.registered` and `users.profile`; publishes `users.profile.response`.

pub mod logic;

use switchyard_sdk::events::{UserProfileRequested, UserRegistered, topics};
use switchyard_sdk::{Event, HandleError, Handler, json, log};

use logic::Profile;

struct UserHandler;

impl Handler for UserHandler {
    fn handle(event: Event) -> Result<(), HandleError> {
        // The event's own timestamp, not the wall clock, so a replay answers the same.
        let now = event.timestamp_ms;
        match event.topic.as_str() {
            topics::USERS_REGISTERED => on_registered(json::payload(&event)?),
            topics::USERS_PROFILE => on_profile_request(json::payload(&event)?, now),
            other => Err(HandleError::fatal(format!("user does not handle topic {other:?}"))),
        }
    }
}

fn on_registered(reg: UserRegistered) -> Result<(), HandleError> {
    let key = logic::profile_key(&reg.username);
    let existing = json::get::<Profile>(&key)?;
    match logic::create_profile(existing.as_ref(), &reg) {
        Some(profile) => {
            json::put_if_unchanged(&key, None, &profile)?;
            switchyard_sdk::log(log::Level::Info, "profile created", &[("username", &reg.username)]);
        }
        None => switchyard_sdk::log(
            log::Level::Info,
            "profile exists already",
            &[("username", &reg.username)],
        ),
    }
    Ok(())
}

fn on_profile_request(req: UserProfileRequested, now: i64) -> Result<(), HandleError> {
    let profile = json::get::<Profile>(&logic::profile_key(&req.username))?;
    let response = logic::respond(profile.as_ref(), &req, now);
    json::publish(topics::USERS_PROFILE_RESPONSE, &req.username, &response)?;
    switchyard_sdk::log(
        log::Level::Debug,
        "profile requested",
        &[
            ("username", &req.username),
            ("replyTo", &req.reply_to),
            ("found", if response.found { "true" } else { "false" }),
        ],
    );
    Ok(())
}

switchyard_sdk::export_handler!(UserHandler);
