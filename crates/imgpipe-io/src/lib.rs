//! imgpipe-io (being written).
