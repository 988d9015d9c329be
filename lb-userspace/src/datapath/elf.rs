//! Map flags set in the eBPF object before it is loaded. aya's loader can override a map's
//! size but not its flags, and some flags are an operator's choice (the connection tables'
//! per-CPU LRU lists, `[conntrack] per_cpu_lru`). The object's maps are legacy `bpf_map_def`
//! records in its `maps` section (type, key size, value size, max entries, flags, ...).

use object::{Object, ObjectSection, ObjectSymbol};

/// Offset of `map_flags` in a `bpf_map_def`.
const FLAGS_AT: u64 = 16;

/// An object's bytes, 8-byte aligned as ELF parsers need them.
#[derive(Debug)]
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes of the words' memory, which outlives the borrow.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably once.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.len) }
    }
}

impl From<&[u8]> for AlignedObject {
    fn from(bytes: &[u8]) -> Self {
        let mut o = AlignedObject {
            words: vec![0; bytes.len().div_ceil(8)],
            len: bytes.len(),
        };
        o.bytes_mut().copy_from_slice(bytes);
        o
    }
}

/// A copy of the ELF object `obj` in which the maps named `maps` have `flags` added to their
/// flags.
pub fn with_map_flags(obj: &[u8], maps: &[&str], flags: u32) -> Result<AlignedObject, String> {
    let file = object::File::parse(obj).map_err(|e| format!("not an ELF object: {e}"))?;
    let mut copy = AlignedObject::from(obj);
    let out = copy.bytes_mut();
    for name in maps {
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok(name))
            .ok_or_else(|| format!("map {name} is not in the object"))?;
        let section = sym
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
            .filter(|s| s.name() == Ok("maps"))
            .ok_or_else(|| format!("{name} is not a map definition in section maps"))?;
        let (start, size) = section
            .file_range()
            .ok_or_else(|| format!("section maps of {name} has no data"))?;
        let at = sym.address() - section.address() + FLAGS_AT;
        if at + 4 > size {
            return Err(format!("{name}: map definition outside its section"));
        }
        let at = (start + at) as usize;
        let old = u32::from_le_bytes(out[at..at + 4].try_into().expect("4 bytes"));
        out[at..at + 4].copy_from_slice(&(old | flags).to_le_bytes());
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use lb_common::maps as m;

    use super::*;

    fn flags_of(obj: &[u8], name: &str) -> u32 {
        let parsed = aya_obj_flags(obj);
        parsed
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f)
            .unwrap()
    }

    /// Map flags as a loader reads them back: aya's own parser.
    fn aya_obj_flags(obj: &[u8]) -> Vec<(String, u32)> {
        let o = aya_obj::Object::parse(obj).unwrap();
        o.maps
            .iter()
            .map(|(n, map)| (n.clone(), map.map_flags()))
            .collect()
    }

    #[test]
    fn sets_flags_of_the_named_maps_only() {
        let obj = super::super::OBJECT;
        if obj.is_empty() {
            return; // built without the eBPF object (AYA_BUILD_SKIP)
        }
        let patched = with_map_flags(obj, &[m::CONNTRACK, m::NAT], 2).unwrap();
        let patched = patched.bytes();
        assert_eq!(
            flags_of(patched, m::CONNTRACK),
            flags_of(obj, m::CONNTRACK) | 2
        );
        assert_eq!(flags_of(patched, m::NAT), flags_of(obj, m::NAT) | 2);
        assert_eq!(flags_of(patched, m::VIPS), flags_of(obj, m::VIPS));
        assert_eq!(patched.len(), obj.len());
        assert!(with_map_flags(obj, &["NO_SUCH_MAP"], 2)
            .unwrap_err()
            .contains("not in the object"));
        assert!(with_map_flags(b"nonsense", &[m::NAT], 2).is_err());
    }
}
