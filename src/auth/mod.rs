//! OAuth login relay sessions, the credential vault, injection into guests, validation and
//! rotation.

pub mod vault;
