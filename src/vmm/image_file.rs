//! The durability of a hibernation image: its pages go to disk while QEMU is still writing it,
//! so that the `fsync` that makes it durable at the end has little left to do (an image of tens
//! of megabytes would otherwise cost its whole write-out after the save), then it is published
//! under its final name.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::VmmError;

/// Below this, a flush found nothing much to write: wait a little before the next.
const IDLE_FLUSH: Duration = Duration::from_millis(2);

/// Flushes an image being written, on a thread of its own, until dropped.
pub(super) struct Writeback {
    done: Arc<AtomicBool>,
}

impl Writeback {
    /// Starts flushing `file` (a descriptor of the image being written).
    pub(super) fn start(file: &File, path: &Path) -> Result<Writeback, VmmError> {
        let file = file.try_clone().map_err(|e| VmmError::io(path, e))?;
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        std::thread::Builder::new()
            .name("mc-writeback".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    // An error here is the final fsync's to report.
                    let _ = file.sync_data();
                    if started.elapsed() < IDLE_FLUSH {
                        std::thread::sleep(IDLE_FLUSH);
                    }
                }
            })
            .map_err(|e| VmmError::io(path, e))?;
        Ok(Writeback { done })
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Makes the finished image private (0600) and durable and gives it its final name.
pub(super) async fn sync_and_publish(partial: &Path, state: &Path) -> Result<u64, VmmError> {
    let (partial, state) = (partial.to_path_buf(), state.to_path_buf());
    tokio::task::spawn_blocking(move || {
        super::private::publish(&partial, &state).map_err(|e| VmmError::io(&state, e))
    })
    .await
    .map_err(|e| VmmError::Control(e.to_string()))?
}
