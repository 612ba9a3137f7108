//! ISO 9660 and UDF: volume descriptors from 32 KiB on, after a 32 KiB system area that may hold
//! anything (an MBR/GPT for hybrid images, or a polyglot's other header).

use crate::Format;

use super::probe::{Ctx, Deferred, Found, Probe, Stop};

const FIRST_VD: u64 = 32 * 1024;
const VD_LEN: u64 = 2048;
/// UDF's volume recognition sequence is scanned for at most this many descriptors.
const MAX_VRS: u64 = 16;

/// Probe for ISO 9660 / UDF.
pub(crate) fn probe(ctx: &Ctx<'_>) -> Probe {
    let id = |k: u64| -> Result<&[u8], Stop> { ctx.get(FIRST_VD + k * VD_LEN + 1, 5) };
    let first = match id(0) {
        Ok(b) => b,
        Err(Stop::Need(n)) => return Probe::Need(n),
        Err(Stop::Short { .. }) => return Probe::NotThis,
    };
    let mut f = Found::new(Format::Iso);
    f.deferred.push(Deferred::StreamLen);
    match first {
        b"CD001" => {
            f.subformat = Some("iso9660");
            Probe::Found(Box::new(f))
        }
        b"NSR02" | b"NSR03" => {
            f.subformat = Some("udf");
            Probe::Found(Box::new(f))
        }
        b"BEA01" => {
            // Pure UDF: BEA01, then NSR02/NSR03 (possibly after other extended descriptors).
            for k in 1..MAX_VRS {
                match id(k) {
                    Ok(b"NSR02" | b"NSR03") => {
                        f.subformat = Some("udf");
                        return Probe::Found(Box::new(f));
                    }
                    Ok(b"TEA01") => return Probe::NotThis,
                    Ok(b"BOOT2" | b"CDW02" | b"CD001") => continue,
                    Ok(_) => return Probe::NotThis,
                    Err(Stop::Need(n)) => return Probe::Need(n),
                    Err(Stop::Short { .. }) => return Probe::NotThis,
                }
            }
            Probe::NotThis
        }
        _ => Probe::NotThis,
    }
}
