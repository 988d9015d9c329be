//! `BPF_MAP_UPDATE_BATCH` for arrays and `BPF_MAP_LOOKUP_BATCH` for hashes (aya has no batch
//! API): a changed Maglev ring is written in one syscall instead of one per slot, which is most
//! of the time of a backend change, and the connection table is read a few thousand entries
//! per syscall instead of two syscalls per entry.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::MapData;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Refuses a map whose key or value size differs from `K`/`V`: the kernel reads and writes
/// that many bytes per element.
fn check_sizes<K, V>(map: &MapData, what: &str) -> io::Result<()> {
    let info = map.info().map_err(io::Error::other)?;
    if info.key_size() as usize != size_of::<K>() || info.value_size() as usize != size_of::<V>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "batch {what} of {}-byte keys and {}-byte values on a map of {}-byte keys and {}-byte values",
                size_of::<K>(),
                size_of::<V>(),
                info.key_size(),
                info.value_size()
            ),
        ));
    }
    Ok(())
}

/// Runs one batch command; on failure the error, with `attr.count` still telling how many
/// elements the kernel handled.
fn batch_call(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid batch request; its callers point it at buffers of `count`
    // keys and values of the sizes the map has (checked), which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `values[i]` at index `keys[i]` of an array map whose values are `V`, in one syscall.
pub fn update<V: aya::Pod>(map: &MapData, keys: &[u32], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    check_sizes::<u32, V>(map, "write")?;
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    batch_call(BPF_MAP_UPDATE_BATCH, &mut attr)
}

/// Reads the entries of a hash map (plain or LRU, not per-CPU) `chunk` at a time and gives
/// each to `each` until it returns false; returns how many were read.
///
/// The kernel walks bucket by bucket, each bucket under its lock, while the data path goes on
/// inserting and evicting: an entry is never read twice (a key always lives in the same
/// bucket), but entries added to buckets already read are missed, and an entry evicted after
/// its bucket was read is still reported.
pub fn lookup_each<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &MapData,
    chunk: usize,
    mut each: impl FnMut(&K, &V) -> bool,
) -> io::Result<usize> {
    check_sizes::<K, V>(map, "read")?;
    let max = map.info().map_err(io::Error::other)?.max_entries().max(1) as usize;
    let mut chunk = chunk.clamp(1, max);
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    // The hash map's cursor: the next bucket (a u32), written by the kernel after each call.
    let (mut cursor, mut next) = (0u32, 0u32);
    let mut first = true;
    let mut read = 0;
    loop {
        keys.resize(chunk, K::default());
        values.resize(chunk, V::default());
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const cursor as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        let done = match batch_call(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => false,
            // The last bucket was read (with the entries of this call, if any).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more entries than fit: read it again with room for it.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 && chunk < max => {
                chunk = (chunk * 2).min(max);
                continue;
            }
            Err(e) => return Err(e),
        };
        for (k, v) in keys.iter().zip(&values).take(attr.count as usize) {
            read += 1;
            if !each(k, v) {
                return Ok(read);
            }
        }
        if done {
            return Ok(read);
        }
        cursor = next;
        first = false;
    }
}
