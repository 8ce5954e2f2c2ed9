//! master-controller: a single-node appliance that gives every user a private microVM running
//! the AI coding CLIs. See `DESIGN.md` in the shared folder for the architecture.
//!
//! The `daemon` feature is the daemon and its CLI; the `agent` feature is the guest agent,
//! which is built statically with only the `guest` protocol and its own modules.

pub mod guest;

#[cfg(feature = "agent")]
pub mod agent;

#[cfg(feature = "daemon")]
pub mod api;
#[cfg(feature = "daemon")]
pub mod auth;
#[cfg(feature = "daemon")]
pub mod cli;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod doctor;
#[cfg(feature = "daemon")]
pub mod events;
#[cfg(feature = "daemon")]
pub mod failpoint;
#[cfg(feature = "daemon")]
pub mod inventory;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod model;
#[cfg(feature = "daemon")]
pub mod net;
#[cfg(feature = "daemon")]
pub mod prompts;
#[cfg(feature = "daemon")]
pub mod providers;
#[cfg(feature = "daemon")]
pub mod store;
#[cfg(feature = "daemon")]
pub mod sync;
#[cfg(feature = "daemon")]
pub mod tasks;
#[cfg(feature = "daemon")]
pub mod tokens;
#[cfg(feature = "daemon")]
pub mod users;
#[cfg(feature = "daemon")]
pub mod vmm;
#[cfg(feature = "daemon")]
pub mod vms;
#[cfg(feature = "daemon")]
pub mod watchdog;
