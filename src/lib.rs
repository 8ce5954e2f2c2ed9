//! master-controller: a single-node appliance that gives every user a private microVM running
//! the AI coding CLIs. See `DESIGN.md` in the shared folder for the architecture.
//!
//! The `daemon` feature is the daemon and its CLI; the `agent` feature is the guest agent,
//! which is built statically with only the `guest` protocol and its own modules.
//!
//! # Layout
//!
//! Bottom to top. A module may call the modules above it in this list, never one below it
//! (`tests/layout.rs` reads every `crate::` path and fails on one that points down the list).
//!
//! | module | owns | may call |
//! |---|---|---|
//! | `guest` | the host↔agent protocol: frames, requests, the agent client | nothing |
//! | `failpoint` | crash points for the tests of durable intents | nothing |
//! | `tokens` | user-scoped bearer tokens: minting and checking | nothing |
//! | `watchdog` | sd-notify | nothing |
//! | `store` | the redb file, transactions, versioned record encoding | nothing |
//! | `providers` | everything about each CLI, one file per CLI, and their registry | nothing |
//! | `model` | the records, their status machines, and the tables that hold them | `store`, `providers` |
//! | `events` | the typed hub events and their channels | `model`, `providers` |
//! | `metrics` | every Prometheus metric | `model`, `providers` |
//! | `sync` | the outbox, the one write path of mirrored records, the Supabase worker | `store`, `model`, `metrics` |
//! | `net` | the bridge, taps and their bindings, the address plan, the egress gateway and its ports | `store`, `model`, `metrics`, `sync` |
//! | `vmm` | the hypervisors behind one trait (QEMU, Firecracker) | `guest` |
//! | `vms` | the VM manager: users' VMs from create to destroy | the above |
//! | `auth` | logins through the relay, the vault, credentials in guests | the above |
//! | `prompts` | prompts through the CLIs, their event streams and records | the above |
//! | `users` | users, their deletion and token epochs | the above |
//! | `inventory` | counts across the store for metrics and stats | the above |
//! | `tasks` | the background scheduler and its jobs | the above |
//! | `api` | the HTTP, SSE and WebSocket surface; thin handlers | the above |
//! | `config` | the configuration, resolved into each service's settings | the above |
//! | `daemon` | start-up, hypervisor selection, the main loop, shutdown | the above |
//! | `doctor` | what the host has and lacks | the above |
//! | `cli` | the command line | the above |
//! | `agent` | `vm-agent`, in the guest | `guest` |

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
