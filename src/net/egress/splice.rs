//! Splicing (being written).
