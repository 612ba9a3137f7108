//! Streaming decoders to raw disk extents (owned by the decoder work, issue 6). Placeholder until it lands.
