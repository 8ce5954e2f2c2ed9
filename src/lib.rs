//! master-controller: a single-node appliance that gives every user a private microVM running
//! the AI coding CLIs. See `DESIGN.md` in the shared folder for the architecture.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod events;
pub mod inventory;
pub mod metrics;
pub mod model;
pub mod store;
pub mod tokens;
pub mod users;
pub mod vms;
pub mod watchdog;
