//! Request heads (being written).
