//! imgpipe-spec (being written).
