//! `BPF_MAP_UPDATE_BATCH` for arrays (aya has no batch API): a changed Maglev ring is written
//! in one syscall instead of one per slot, which is most of the time of a backend change.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::MapData;

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

/// Writes `values[i]` at index `keys[i]` of an array map whose values are `V`, in one syscall.
/// Refuses a map whose key or value size differs: the kernel reads that many bytes per element.
pub fn update<V: aya::Pod>(map: &MapData, keys: &[u32], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let info = map.info().map_err(io::Error::other)?;
    if info.key_size() as usize != size_of::<u32>() || info.value_size() as usize != size_of::<V>()
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "batch write of {}-byte values into a map of {}-byte keys and {}-byte values",
                size_of::<V>(),
                info.key_size(),
                info.value_size()
            ),
        ));
    }
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
    // SAFETY: `attr` is a valid batch request whose pointers reference `count` keys and values
    // of the sizes the map has (checked above), which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
