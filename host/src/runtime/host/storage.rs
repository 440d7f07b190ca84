use crate::runtime::bindings::storage::{Error, Host};
use crate::runtime::state::{Guard, InvocationState, Origin, Write, caps};
use crate::store::{Staged, StoreError};

use super::{MAX_KEY_BYTES, MAX_VALUE_BYTES, view_of};

/// What wit `storage` works on: the staged transaction, and the writes it reports.
pub(crate) struct StorageView<'a> {
    origin: &'a Origin,
    staged: &'a mut Staged,
    writes: &'a mut Vec<Write>,
    guard: &'a mut Guard,
}

view_of!(Storage => StorageView);

impl StorageView<'_> {
    pub(crate) fn of(s: &mut InvocationState) -> StorageView<'_> {
        StorageView {
            origin: &s.origin,
            staged: &mut s.staged,
            writes: &mut s.effects.writes,
            guard: &mut s.guard,
        }
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidKey(format!(
            "key must be 1 to {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), Error> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::ValueTooLarge(value.len() as u64));
    }
    Ok(())
}

impl StorageView<'_> {
    /// Maps a store failure to the guest's error. A database failure also poisons the
    /// invocation: what it read cannot be trusted any more.
    fn storage_error(&mut self, err: StoreError) -> Error {
        match err {
            StoreError::NotANumber { found, .. } => Error::NotANumber(found),
            StoreError::Overflow { key } => Error::NotANumber(format!("{key}: overflow")),
            other => Error::Unavailable(self.guard.poison(self.origin, "storage", &other)),
        }
    }
}

impl Host for StorageView<'_> {
    #[tracing::instrument(level = "debug", name = "storage.get", skip_all, fields(otel.kind = "internal"))]
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Error> {
        crate::observe::metrics().host_call("storage");
        check_key(&key)?;
        let result = self.staged.get(&key).await;
        result.map_err(|e| self.storage_error(e))
    }

    #[tracing::instrument(level = "debug", name = "storage.put", skip_all, fields(otel.kind = "internal"))]
    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), Error> {
        crate::observe::metrics().host_call("storage");
        if let Some(why) = self.origin.refuse_write("storage put") {
            return Err(Error::ReadOnly(why));
        }
        check_key(&key)?;
        check_value(&value)?;
        self.guard.count_write(value.len()).map_err(Error::Unavailable)?;
        self.staged.put(&key, &value);
        let value = String::from_utf8_lossy(&value).into_owned();
        self.writes.push(Write::Put { key, value });
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "storage.delete", skip_all, fields(otel.kind = "internal"))]
    async fn delete(&mut self, key: String) -> Result<bool, Error> {
        crate::observe::metrics().host_call("storage");
        if let Some(why) = self.origin.refuse_write("storage delete") {
            return Err(Error::ReadOnly(why));
        }
        check_key(&key)?;
        self.guard.count_write(0).map_err(Error::Unavailable)?;
        let result = self.staged.delete(&key).await;
        let existed = result.map_err(|e| self.storage_error(e))?;
        if existed {
            self.writes.push(Write::Delete { key });
        }
        Ok(existed)
    }

    #[tracing::instrument(level = "debug", name = "storage.list-prefix", skip_all, fields(otel.kind = "internal"))]
    async fn list_prefix(
        &mut self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, Error> {
        crate::observe::metrics().host_call("storage");
        if prefix.len() > MAX_KEY_BYTES {
            return Err(Error::InvalidKey(format!("prefix longer than {MAX_KEY_BYTES} bytes")));
        }
        // Bound one call's result so a guest cannot pull a whole table into memory.
        let limit = limit.min(1000);
        let result = self
            .staged
            .list_prefix(&prefix, start_after.as_deref(), limit, caps::MAX_LISTED_BYTES)
            .await;
        match result.map_err(|e| self.storage_error(e))? {
            Some(rows) => Ok(rows),
            None => Err(Error::Unavailable(format!(
                "list-prefix {prefix:?} would return more than {} bytes; ask for fewer keys per call",
                caps::MAX_LISTED_BYTES
            ))),
        }
    }

    #[tracing::instrument(level = "debug", name = "storage.increment", skip_all, fields(otel.kind = "internal"))]
    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, Error> {
        crate::observe::metrics().host_call("storage");
        if let Some(why) = self.origin.refuse_write("storage increment") {
            return Err(Error::ReadOnly(why));
        }
        check_key(&key)?;
        self.guard.count_write(20).map_err(Error::Unavailable)?;
        let result = self.staged.increment(&key, delta).await;
        let value = result.map_err(|e| self.storage_error(e))?;
        self.writes.push(Write::Put {
            key,
            value: value.to_string(),
        });
        Ok(value)
    }

    #[tracing::instrument(level = "debug", name = "storage.compare-and-swap", skip_all, fields(otel.kind = "internal"))]
    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, Error> {
        crate::observe::metrics().host_call("storage");
        if let Some(why) = self.origin.refuse_write("storage compare-and-swap") {
            return Err(Error::ReadOnly(why));
        }
        check_key(&key)?;
        if let Some(value) = &new {
            check_value(value)?;
        }
        self.guard
            .count_write(new.as_ref().map_or(0, Vec::len))
            .map_err(Error::Unavailable)?;
        let result = self
            .staged
            .compare_and_swap(&key, expected.as_deref(), new.as_deref())
            .await;
        let swapped = result.map_err(|e| self.storage_error(e))?;
        if swapped {
            self.writes.push(match new {
                Some(value) => Write::Put {
                    key,
                    value: String::from_utf8_lossy(&value).into_owned(),
                },
                None => Write::Delete { key },
            });
        }
        Ok(swapped)
    }
}
