//! Hot keys: keys that events of different partitions read and wrote at once, so that one
//! of them had to run again (a conflict at commit, see [`super::group`]). From then on,
//! in this process, reading a hot key waits for its turn and holds it until the reading
//! event's chain has committed: partitions take turns on that key instead of re-running
//! each other (the order component's id sequence is one). Other keys stay optimistic.
//! Hosts sharing PostgreSQL still resolve conflicts between them at commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Turn = Arc<tokio::sync::Mutex<()>>;

#[derive(Debug, Default)]
pub(crate) struct HotKeys {
    turns: Mutex<HashMap<(String, String), Turn>>,
}

impl HotKeys {
    /// `component`'s `key` made an event run again.
    pub(crate) fn mark(&self, component: &str, key: &str) {
        self.turns
            .lock()
            .expect("hot keys lock")
            .entry((component.to_string(), key.to_string()))
            .or_default();
    }

    /// The turn of a hot key; None for a key partitions have not fought over.
    pub(crate) fn turn(&self, component: &str, key: &str) -> Option<Turn> {
        let turns = self.turns.lock().expect("hot keys lock");
        if turns.is_empty() {
            return None;
        }
        turns.get(&(component.to_string(), key.to_string())).cloned()
    }
}
