//! Streaming format inspector (owned by the inspector work, issue 3). Placeholder until it lands.
