//! Glance multihash selection rules (owned by the signature work, issue 4). Placeholder until it lands.
