//! LUKS1/LUKS2 header construction (owned by the encryption work, issue 5). Placeholder until it lands.
