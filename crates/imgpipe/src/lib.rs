//! imgpipe (being written).
