//! Cryptography for imgpipe: streaming hashers (Glance multihash), image-signature verification
//! compatible with OpenStack's cursive, AES-XTS disk encryption and LUKS headers.
//!
//! Everything is synchronous and slice-driven so it can be fuzzed and benchmarked without a
//! runtime; the engine runs each stage on its own thread.
//!
//! ```
//! use imgpipe_crypto::hash::{Algorithm, Hasher};
//! let mut h = Hasher::new(Algorithm::Sha256);
//! h.update(b"abc");
//! assert_eq!(
//!     h.finish_hex(),
//!     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
//! );
//! ```

pub mod hash;
pub mod luks;
pub mod multihash;
pub mod signature;
pub mod xts;

#[doc(hidden)]
pub mod fuzzing {
    //! Fuzzing entry points, not API: the targets in `fuzz/` are one-line calls into these.
    pub use crate::signature::fuzz::signature_inputs;
}
