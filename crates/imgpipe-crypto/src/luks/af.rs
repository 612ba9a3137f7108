//! The LUKS anti-forensic information splitter (LUKS1 on-disk format §2.4, also used by LUKS2
//! "af": {"type": "luks1"}): a key of `n` bytes is expanded into `stripes` blocks of `n` bytes so
//! that destroying any part of the key material destroys the key.

use openssl::hash::{Hasher, MessageDigest};
use zeroize::Zeroizing;

use super::LuksError;

fn crypto(op: &'static str) -> impl Fn(openssl::error::ErrorStack) -> LuksError {
    move |_| LuksError::Crypto { op }
}

/// The LUKS1 hash diffuser: the buffer is cut into digest-sized blocks; block `i` becomes
/// `H(be32(i) ‖ block_i)` truncated to the block's length (the last block may be partial).
fn diffuse(md: MessageDigest, buf: &mut [u8]) -> Result<(), LuksError> {
    let ds = md.size();
    for (i, block) in buf.chunks_mut(ds).enumerate() {
        let i = u32::try_from(i).map_err(|_| LuksError::Crypto {
            op: "diffuse: block index overflow",
        })?;
        let mut h = Hasher::new(md).map_err(crypto("diffuse: hash init"))?;
        h.update(&i.to_be_bytes())
            .map_err(crypto("diffuse: hash update"))?;
        h.update(block).map_err(crypto("diffuse: hash update"))?;
        let d = h.finish().map_err(crypto("diffuse: hash final"))?;
        let n = block.len();
        block.copy_from_slice(d.get(..n).ok_or(LuksError::Crypto {
            op: "diffuse: short digest",
        })?);
    }
    Ok(())
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Splits `key` into `stripes` blocks: stripes 0..s-1 random, the last `d ⊕ key` where `d` is
/// the diffused running XOR of the random stripes.
pub(super) fn split(
    key: &[u8],
    stripes: usize,
    md: MessageDigest,
) -> Result<Zeroizing<Vec<u8>>, LuksError> {
    let n = key.len();
    let total = n.checked_mul(stripes).ok_or(LuksError::Crypto {
        op: "AF split: size overflow",
    })?;
    let mut out = Zeroizing::new(vec![0u8; total]);
    let mut d = Zeroizing::new(vec![0u8; n]);
    let last = stripes.checked_sub(1).ok_or(LuksError::Crypto {
        op: "AF split: zero stripes",
    })?;
    let (random, tail) = out.split_at_mut(last * n);
    openssl::rand::rand_bytes(random).map_err(crypto("AF split: random stripes"))?;
    for s in random.chunks(n) {
        xor_into(&mut d, s);
        diffuse(md, &mut d)?;
    }
    tail.copy_from_slice(&d);
    xor_into(tail, key);
    Ok(out)
}

/// Merges split key material (`n * stripes` bytes) back into the `n`-byte key.
pub(super) fn merge(
    material: &[u8],
    n: usize,
    stripes: usize,
    md: MessageDigest,
) -> Result<Zeroizing<Vec<u8>>, LuksError> {
    let last = stripes.checked_sub(1).ok_or(LuksError::Crypto {
        op: "AF merge: zero stripes",
    })?;
    let mut d = Zeroizing::new(vec![0u8; n]);
    let head = last.checked_mul(n).ok_or(LuksError::Crypto {
        op: "AF merge: size overflow",
    })?;
    let (random, tail) = material
        .get(..head.saturating_add(n))
        .ok_or(LuksError::Crypto {
            op: "AF merge: material shorter than key size × stripes",
        })?
        .split_at(head);
    for s in random.chunks(n) {
        xor_into(&mut d, s);
        diffuse(md, &mut d)?;
    }
    xor_into(&mut d, tail);
    Ok(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn split_then_merge_roundtrips_for_every_hash_and_partial_blocks() {
        // sha1 (20 B) against 32/64-byte keys exercises the partial last diffuser block.
        for md in [
            MessageDigest::sha1(),
            MessageDigest::sha256(),
            MessageDigest::sha512(),
        ] {
            for n in [32usize, 64] {
                let key: Vec<u8> = (0..n as u8).collect();
                let m = split(&key, 4000, md).unwrap();
                assert_eq!(m.len(), n * 4000);
                assert_eq!(&merge(&m, n, 4000, md).unwrap()[..], &key[..]);
                // Damaging any one stripe destroys the key.
                let mut bad = m.clone();
                bad[1234] ^= 1;
                assert_ne!(&merge(&bad, n, 4000, md).unwrap()[..], &key[..]);
            }
        }
    }

    #[test]
    fn one_stripe_is_the_key_itself() {
        let key = [9u8; 32];
        let m = split(&key, 1, MessageDigest::sha256()).unwrap();
        assert_eq!(&m[..], &key[..]);
    }
}
