//! master-controller: a single-node appliance that gives every user a private microVM running
//! the AI coding CLIs. See `DESIGN.md` in the shared folder for the architecture.
//!
//! The `daemon` feature is the daemon and its CLI; the `agent` feature is the guest agent,
//! which is built statically with only the `guest` protocol and its own modules.
//!
//! # Layout
//!
//! Top to bottom, from the API down to the store. A module may call the modules below it in this
//! list, never one above it (`tests/layout.rs` reads every `crate::` path and fails on one that
//! points up the list).
//!
//! | module | owns | may call |
//! |---|---|---|
//! | `agent` | `vm-agent`, in the guest | `guest` |
//! | `cli` | the command line | the modules below |
//! | `doctor` | what the host has and lacks | the modules below |
//! | `daemon` | start-up, hypervisor selection, the main loop, shutdown | the modules below |
//! | `config` | the configuration, resolved into each service's settings | the modules below |
//! | `api` | the HTTP, SSE and WebSocket surface; thin handlers | the modules below |
//! | `tasks` | the background scheduler and its jobs | the modules below |
//! | `inventory` | counts across the store for metrics and stats | the modules below |
//! | `users` | users, their deletion and token epochs | the modules below |
//! | `workspace` | the files API and exec in a user's workspace, as the CLI user | the modules below |
//! | `prompts` | prompts through the CLIs, their event streams and records | the modules below |
//! | `auth` | logins through the relay, the vault, credentials in guests | the modules below |
//! | `vms` | the VM manager: users' VMs from create to destroy | the modules below |
//! | `vmm` | the hypervisors behind one trait (QEMU, Firecracker) | `guest` |
//! | `conversations` | conversations with a CLI: their records, the user's list, their turns | `store`, `model`, `providers`, `sync` |
//! | `net` | the bridge, taps and their bindings, the address plan, the egress gateway and its ports | `store`, `model`, `metrics`, `sync` |
//! | `sync` | the outbox, the one write path of mirrored records, the Supabase worker | `store`, `model`, `metrics` |
//! | `metrics` | every Prometheus metric | `model`, `providers` |
//! | `events` | the typed hub events and their channels | `model`, `providers` |
//! | `model` | the records, their status machines, and the tables that hold them | `store`, `providers` |
//! | `providers` | everything about each CLI, one file per CLI, and their registry | nothing |
//! | `store` | the redb file, transactions, versioned record encoding | nothing |
//! | `watchdog` | sd-notify | nothing |
//! | `tokens` | user-scoped bearer tokens: minting and checking | nothing |
//! | `failpoint` | crash points for the tests of durable intents | nothing |
//! | `guest` | the host↔agent protocol: frames, requests, the agent client | nothing |

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
pub mod conversations;
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
#[cfg(feature = "daemon")]
pub mod workspace;
