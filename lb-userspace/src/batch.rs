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

/// Writes `values[i]` at index `keys[i]` of an array map whose values are `u32`.
pub fn update_u32s(map: &MapData, keys: &[u32], values: &[u32]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let (mut keys, mut values) = (keys, values);
    while !keys.is_empty() {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid batch request whose pointers reference `count` keys and
        // values that outlive the call; the kernel writes back only `count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        // The kernel reports in `count` how many it wrote, also when it stopped early.
        let done = (attr.count as usize).min(keys.len());
        if rc < 0 || done == 0 {
            let err = io::Error::last_os_error();
            if rc == 0 || err.kind() != io::ErrorKind::Interrupted || done == 0 {
                return Err(err);
            }
        }
        keys = &keys[done..];
        values = &values[done..];
    }
    Ok(())
}
