//! Barbican certificate retrieval (owned by the signature work, issue 4). Placeholder until it lands.
