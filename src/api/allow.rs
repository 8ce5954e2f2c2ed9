//! The methods each route path takes, for the `Allow` header of a 405. The table is filled by
//! the same calls that build the routes ([`super::endpoint::endpoint`] and the few routes
//! built without it), so a route added, removed or given another method changes its `Allow`
//! with it: there is no second list to forget.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// The `(template, method)` pairs of every route built from one context.
#[derive(Debug, Default)]
pub struct RouteTable(Mutex<BTreeSet<(&'static str, &'static str)>>);

impl RouteTable {
    /// Records that `template` (`/api/vms/:vmId`) takes `method`.
    pub fn record(&self, method: &'static str, template: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((template, method));
    }

    /// Every `(template, method)` pair recorded, sorted.
    pub fn entries(&self) -> Vec<(&'static str, &'static str)> {
        let table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        table.iter().copied().collect()
    }

    /// The methods the routes matching `path` take, sorted and deduplicated; empty when no
    /// route matches it. A `:name` segment of a template matches any one segment, as warp's
    /// `String` path parameters do.
    pub fn allowed(&self, path: &str) -> Vec<&'static str> {
        let table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut methods: Vec<&'static str> = table
            .iter()
            .filter(|(template, _)| matches(template, path))
            .map(|(_, method)| *method)
            .collect();
        methods.sort_unstable();
        methods.dedup();
        methods
    }
}

fn matches(template: &str, path: &str) -> bool {
    let mut wanted = template.split('/');
    let mut given = path.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with(':') && !g.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_of_the_routes_matching_a_path() {
        let table = RouteTable::default();
        table.record("GET", "/api/vms");
        table.record("GET", "/api/vms/:vmId");
        table.record("POST", "/api/vms/:vmId/heartbeat");
        table.record("GET", "/api/vms/statistics/summary");
        table.record("DELETE", "/api/users/:userId");
        table.record("GET", "/api/users/:userId");
        table.record("PATCH", "/api/users/:userId");
        table.record("GET", "/");
        assert_eq!(table.allowed("/api/vms"), ["GET"]);
        assert_eq!(table.allowed("/api/vms/vm-1/heartbeat"), ["POST"]);
        assert_eq!(table.allowed("/api/vms/statistics/summary"), ["GET"]);
        assert_eq!(table.allowed("/api/users/u1"), ["DELETE", "GET", "PATCH"]);
        assert_eq!(table.allowed("/"), ["GET"]);
        assert!(table.allowed("/api/users//").is_empty());
        assert!(table.allowed("/api/nothing").is_empty());
    }
}
