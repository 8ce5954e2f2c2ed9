//! The credential vault (being written).
