//! AES-XTS sector encryption (owned by the encryption work, issue 5). Placeholder until it lands.
