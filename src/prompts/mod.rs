//! Prompt execution: the provider CLIs run through the agent in the user's VM, their output
//! translated into one normalised event stream.

pub mod events;
pub mod lines;
pub mod log;
pub mod providers;
