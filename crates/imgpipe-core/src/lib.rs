//! imgpipe-core (being written).
