//! A prompt's event log: every event gets the next id, the last ones are kept within a bound
//! (count and bytes), and any number of streams read it at their own pace. The writer never
//! waits for a reader: a reader that falls behind the bound is told how many events it missed.
//! A stream that re-attaches with `Last-Event-ID` replays what is kept after that id, then
//! continues live.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::events::PromptEvent;

#[derive(Debug, Clone, Copy)]
pub struct LogBounds {
    pub max_events: usize,
    pub max_bytes: usize,
}

struct Kept {
    id: u64,
    event: Arc<PromptEvent>,
    bytes: usize,
}

struct State {
    kept: VecDeque<Kept>,
    bytes: usize,
    last_id: u64,
}

pub struct EventLog {
    state: Mutex<State>,
    bounds: LogBounds,
    /// The id of the newest event (0 before the first); readers wait on it.
    newest: watch::Sender<u64>,
}

/// What a reader gets next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Event(u64, Arc<PromptEvent>),
    /// Events `from..=to` were dropped before this reader got to them.
    Missed {
        from: u64,
        to: u64,
    },
}

impl EventLog {
    pub fn new(bounds: LogBounds) -> Arc<EventLog> {
        Arc::new(EventLog {
            state: Mutex::new(State {
                kept: VecDeque::new(),
                bytes: 0,
                last_id: 0,
            }),
            bounds,
            newest: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `event` and returns its id. Never waits.
    pub fn push(&self, event: PromptEvent) -> u64 {
        let bytes = serde_json::to_vec(&event).map_or(0, |v| v.len());
        let id = {
            let mut state = self.lock();
            state.last_id += 1;
            let id = state.last_id;
            state.kept.push_back(Kept {
                id,
                event: Arc::new(event),
                bytes,
            });
            state.bytes += bytes;
            // Keep the newest event whatever its size, so the final one always reaches readers.
            while state.kept.len() > 1
                && (state.kept.len() > self.bounds.max_events
                    || state.bytes > self.bounds.max_bytes)
            {
                if let Some(old) = state.kept.pop_front() {
                    state.bytes -= old.bytes;
                }
            }
            id
        };
        // Only a wake-up for readers, who read the log itself: never move it backwards.
        self.newest
            .send_modify(|newest| *newest = (*newest).max(id));
        id
    }

    /// A reader starting after event `after` (0: from the beginning).
    pub fn reader(self: &Arc<Self>, after: u64) -> Reader {
        Reader {
            log: self.clone(),
            next: after + 1,
            newest: self.newest.subscribe(),
        }
    }

    /// The kept events, oldest first.
    pub fn snapshot(&self) -> Vec<(u64, Arc<PromptEvent>)> {
        self.lock()
            .kept
            .iter()
            .map(|k| (k.id, k.event.clone()))
            .collect()
    }
}

pub struct Reader {
    log: Arc<EventLog>,
    next: u64,
    newest: watch::Receiver<u64>,
}

impl Reader {
    /// The next event, waiting for it if need be; `None` once the log's final event (`done` or
    /// `error`) has been read.
    pub async fn next(&mut self) -> Option<Next> {
        loop {
            if self.next == 0 {
                return None;
            }
            if let Some(next) = self.take() {
                return Some(next);
            }
            if self.newest.changed().await.is_err() {
                // The log is gone: nothing more will come.
                return self.take();
            }
        }
    }

    fn take(&mut self) -> Option<Next> {
        let state = self.log.lock();
        let oldest = state.kept.front()?.id;
        if self.next < oldest {
            let missed = Next::Missed {
                from: self.next,
                to: oldest - 1,
            };
            self.next = oldest;
            return Some(missed);
        }
        let kept = state.kept.get((self.next - oldest) as usize)?;
        let event = kept.event.clone();
        let id = kept.id;
        // After the final event there is nothing more to read.
        self.next = if event.is_final() { 0 } else { id + 1 };
        Some(Next::Event(id, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(max_events: usize) -> Arc<EventLog> {
        EventLog::new(LogBounds {
            max_events,
            max_bytes: 1 << 20,
        })
    }

    fn done() -> PromptEvent {
        PromptEvent::Done {
            exit_code: Some(0),
            usage: None,
            duration_ms: 1,
        }
    }

    async fn drain(reader: &mut Reader) -> Vec<Next> {
        let mut all = Vec::new();
        while let Some(next) = reader.next().await {
            all.push(next);
        }
        all
    }

    fn ids(items: &[Next]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|n| match n {
                Next::Event(id, _) => Some(*id),
                Next::Missed { .. } => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn re_attach_replays_after_the_last_id_without_gaps_or_duplicates() {
        let log = log(100);
        for word in ["a", "b", "c"] {
            log.push(PromptEvent::content(word));
        }
        let mut first = log.reader(0);
        assert!(matches!(first.next().await, Some(Next::Event(1, _))));
        assert!(matches!(first.next().await, Some(Next::Event(2, _))));
        drop(first);
        let mut again = log.reader(2);
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                log.push(PromptEvent::content("d"));
                log.push(done());
            })
        };
        assert_eq!(ids(&drain(&mut again).await), [3, 4, 5]);
        writer.await.unwrap();
        assert_eq!(ids(&drain(&mut log.reader(0)).await), [1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_slow_reader_never_holds_the_writer_and_learns_what_it_missed() {
        let log = log(3);
        let mut slow = log.reader(0);
        for n in 0..10 {
            log.push(PromptEvent::content(&n.to_string()));
        }
        log.push(done());
        let all = drain(&mut slow).await;
        assert_eq!(all[0], Next::Missed { from: 1, to: 8 });
        assert_eq!(ids(&all), [9, 10, 11]);
        assert_eq!(log.snapshot().len(), 3);
    }

    #[tokio::test]
    async fn the_byte_bound_keeps_at_least_the_final_event() {
        let log = EventLog::new(LogBounds {
            max_events: 100,
            max_bytes: 10,
        });
        log.push(PromptEvent::content("a long piece of text"));
        log.push(done());
        let kept = log.snapshot();
        assert_eq!(kept.len(), 1);
        assert!(kept[0].1.is_final());
    }
}
