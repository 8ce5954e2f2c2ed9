//! Which users have a transfer or a command running, so the idle hibernation leaves their VM
//! alone: a guard per use, counted per user, gone when the use ends (also when a client leaves
//! in the middle of a download and its body stream is dropped).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub(super) struct Busy {
    users: Mutex<HashMap<String, usize>>,
}

impl Busy {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn enter(self: &Arc<Self>, user_id: &str) -> Use {
        *self.lock().entry(user_id.to_string()).or_default() += 1;
        Use {
            busy: self.clone(),
            user_id: user_id.to_string(),
        }
    }

    pub(super) fn has(&self, user_id: &str) -> bool {
        self.lock().contains_key(user_id)
    }
}

/// One use; the user stops being busy when their last use is dropped.
pub struct Use {
    busy: Arc<Busy>,
    user_id: String,
}

impl Drop for Use {
    fn drop(&mut self) {
        let mut users = self.busy.lock();
        if let Some(count) = users.get_mut(&self.user_id) {
            *count -= 1;
            if *count == 0 {
                users.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_busy_until_the_last_use_ends() {
        let busy = Arc::new(Busy::default());
        let first = busy.enter("u1");
        let second = busy.enter("u1");
        assert!(busy.has("u1") && !busy.has("u2"));
        drop(first);
        assert!(busy.has("u1"));
        drop(second);
        assert!(!busy.has("u1"));
    }
}
