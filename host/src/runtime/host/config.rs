use crate::runtime::bindings::config::Host;
use crate::runtime::state::InvocationState;

impl Host for InvocationState {
    async fn get(&mut self, key: String) -> Option<String> {
        self.component.config.get(&key).cloned()
    }

    async fn get_all(&mut self) -> Vec<(String, String)> {
        self.component
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
