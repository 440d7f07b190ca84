use std::collections::BTreeMap;

use crate::runtime::bindings::config::Host;
use crate::runtime::state::InvocationState;

use super::view_of;

/// What wit `config` reads: the component's `config` table from topics.toml.
pub(crate) struct ConfigView<'a> {
    config: &'a BTreeMap<String, String>,
}

view_of!(Config => ConfigView);

impl ConfigView<'_> {
    pub(crate) fn of(s: &mut InvocationState) -> ConfigView<'_> {
        ConfigView {
            config: &s.origin.component.config,
        }
    }
}

impl Host for ConfigView<'_> {
    #[tracing::instrument(level = "debug", name = "config.get", skip_all, fields(otel.kind = "internal"))]
    async fn get(&mut self, key: String) -> Option<String> {
        crate::observe::metrics().host_call("config");
        self.config.get(&key).cloned()
    }

    #[tracing::instrument(level = "debug", name = "config.get-all", skip_all, fields(otel.kind = "internal"))]
    async fn get_all(&mut self) -> Vec<(String, String)> {
        crate::observe::metrics().host_call("config");
        self.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}
