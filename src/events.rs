//! The publish side of the WebSocket hub. Other modules publish events to channels
//! (`user:<id>`, `admin`); the hub in `api::ws` delivers them to the subscribers that may see
//! them. The broadcast buffer is bounded: a subscriber that falls behind it is dropped.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

pub const ADMIN_CHANNEL: &str = "admin";

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub channel: String,
    pub data: serde_json::Value,
}

#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<Event>>,
}

impl EventHub {
    pub fn new(capacity: usize) -> EventHub {
        let (sender, _) = broadcast::channel(capacity.max(1));
        EventHub { sender }
    }

    /// Publishes `data` (an object with an `event` field) to `channel`. Subscribers of the
    /// admin channel see every event. Returns how many connections were reached; zero is not an
    /// error.
    pub fn publish(&self, channel: &str, data: serde_json::Value) -> usize {
        let event = Arc::new(Event {
            channel: channel.to_string(),
            data,
        });
        self.sender.send(event).unwrap_or(0)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }
}
