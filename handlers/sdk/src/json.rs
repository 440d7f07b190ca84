//! JSON over the host imports: decode payloads, store and publish serde values.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Event, HandleError, publish, storage, timers};

/// Decodes the event payload as `T`. A payload that is not the expected JSON is a
/// fatal error: retrying cannot fix it, so it goes to the dead-letter topic.
pub fn payload<T: DeserializeOwned>(event: &Event) -> Result<T, HandleError> {
    decode(&event.payload)
}

/// Decodes JSON bytes as `T`, naming the schema in the error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HandleError> {
    serde_json::from_slice(bytes).map_err(|err| {
        HandleError::Fatal(format!(
            "payload is not a valid {}: {err}",
            std::any::type_name::<T>().rsplit("::").next().unwrap_or("value")
        ))
    })
}

/// Reads a JSON value stored under `key`.
pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, HandleError> {
    match storage::get(key)? {
        Some(bytes) => decode(&bytes).map(Some),
        None => Ok(None),
    }
}

/// Stores `value` as JSON under `key`.
pub fn put<T: Serialize>(key: &str, value: &T) -> Result<(), HandleError> {
    let bytes = serde_json::to_vec(value).map_err(HandleError::fatal)?;
    storage::put(key, &bytes)?;
    Ok(())
}

/// A value read together with the bytes it was decoded from, so that a later write can
/// check nothing changed in between (see [`put_if_unchanged`]).
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    raw: Vec<u8>,
}

impl<T> Versioned<T> {
    /// The stored bytes the value was read from.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// Reads a JSON value stored under `key`, keeping its bytes for [`put_if_unchanged`].
pub fn get_versioned<T: DeserializeOwned>(key: &str) -> Result<Option<Versioned<T>>, HandleError> {
    match storage::get(key)? {
        Some(raw) => Ok(Some(Versioned {
            value: decode(&raw)?,
            raw,
        })),
        None => Ok(None),
    }
}

/// Stores `value` under `key` only if the key still holds `read` (`None`: absent), i.e.
/// what this invocation read before deciding. A concurrent change (another partition
/// touching the same record) is a retryable conflict: the retry reads the new state.
pub fn put_if_unchanged<T: Serialize>(key: &str, read: Option<&[u8]>, value: &T) -> Result<(), HandleError> {
    let bytes = serde_json::to_vec(value).map_err(HandleError::fatal)?;
    if storage::compare_and_swap(key, read, Some(&bytes))? {
        Ok(())
    } else {
        Err(HandleError::retryable(format!(
            "conflict: {key} changed while this event was handled"
        )))
    }
}

/// Removes `key`; true when it existed.
pub fn delete(key: &str) -> Result<bool, HandleError> {
    Ok(storage::delete(key)?)
}

/// All keys under `prefix` with their decoded values, in key order (pages through
/// `list-prefix` so callers need not).
pub fn list_prefix<T: DeserializeOwned>(prefix: &str) -> Result<Vec<(String, T)>, HandleError> {
    const PAGE: u32 = 100;
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = storage::list_prefix(prefix, after.as_deref(), PAGE)?;
        let full = page.len() == PAGE as usize;
        for (key, bytes) in page {
            let value = decode(&bytes)?;
            after = Some(key.clone());
            out.push((key, value));
        }
        if !full {
            return Ok(out);
        }
    }
}

fn message<T: Serialize>(topic: &str, key: &str, value: &T) -> Result<publish::Message, HandleError> {
    Ok(publish::Message {
        topic: topic.to_string(),
        key: Some(key.as_bytes().to_vec()),
        payload: serde_json::to_vec(value).map_err(HandleError::fatal)?,
        headers: Vec::new(),
    })
}

/// Publishes `value` as JSON to `topic`, keyed by `key`.
pub fn publish<T: Serialize>(topic: &str, key: &str, value: &T) -> Result<(), HandleError> {
    publish::send(&message(topic, key, value)?)?;
    Ok(())
}

/// Publishes `value` as JSON to `topic`, keyed by `key`, after `delay_ms`; returns the
/// timer id (for `timers::cancel`).
pub fn schedule<T: Serialize>(delay_ms: u64, topic: &str, key: &str, value: &T) -> Result<String, HandleError> {
    Ok(timers::schedule(delay_ms, &message(topic, key, value)?)?)
}
