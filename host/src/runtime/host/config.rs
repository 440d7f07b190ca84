use crate::runtime::bindings::config::Host;
use crate::runtime::state::InvocationState;

impl Host for InvocationState {
    #[tracing::instrument(level = "debug", name = "config.get", skip_all, fields(otel.kind = "internal"))]
    async fn get(&mut self, key: String) -> Option<String> {
        crate::observe::metrics().host_call("config");
        self.component.config.get(&key).cloned()
    }

    #[tracing::instrument(level = "debug", name = "config.get-all", skip_all, fields(otel.kind = "internal"))]
    async fn get_all(&mut self) -> Vec<(String, String)> {
        crate::observe::metrics().host_call("config");
        self.component
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
