//! Health checks of leased upstream ports (being written).
