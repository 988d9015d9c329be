//! The object's test and benchmark programs: the live-frames generator, the sink that counts
//! what a benchmark delivers, and the floor forwarder. The daemon never attaches them.

use aya::maps::{Array, DevMap, MapData, PerCpuArray};
use lb_common::{csum, maps as m};

use super::{map_err, AttachMode, DataPath, DataPathError, Held};
use crate::model::Mac;

impl DataPath {
    /// Sets the generator's traffic: every frame starts as the first 42 bytes of `template`
    /// (an untagged IPv4 frame without options carrying UDP or TCP; its IPv4 checksum is
    /// recomputed here, a UDP checksum cleared, a TCP checksum left as is, so wrong), and
    /// packet n belongs to flow n mod `flows`, from `first_src + f / 16384`, port
    /// `1024 + f % 16384`.
    pub fn set_generator(
        &mut self,
        flows: u32,
        first_src: std::net::Ipv4Addr,
        template: &[u8],
    ) -> Result<(), DataPathError> {
        let bad = |why: &str| DataPathError::Option(format!("generator template: {why}"));
        let len = m::GEN_HDR_LEN;
        if template.len() < len || template[12..14] != [0x08, 0x00] {
            return Err(bad("needs an untagged IPv4 frame of at least 42 bytes"));
        }
        let udp = template[23] == 17;
        if template[14] != 0x45 || !(udp || template[23] == 6) {
            return Err(bad("needs IPv4 without options carrying UDP or TCP"));
        }
        let mut hdr = [0u8; 48];
        hdr[..len].copy_from_slice(&template[..len]);
        hdr[24..26].fill(0);
        let check = csum::checksum(&hdr[14..34], 0);
        hdr[24..26].copy_from_slice(&check.to_ne_bytes());
        if udp {
            hdr[40..42].fill(0);
        }
        let words: [u64; 6] = std::array::from_fn(|i| {
            u64::from_ne_bytes(hdr[8 * i..8 * i + 8].try_into().expect("8 bytes"))
        });
        let mut a: Array<_, [u64; 6]> = self.typed(m::GEN_HDR)?;
        a.set(0, words, 0).map_err(map_err(m::GEN_HDR))?;
        let mut a: Array<_, [u32; 4]> = self.typed(m::GEN)?;
        a.set(0, [flows.max(1), u32::from(first_src), 0, 0], 0)
            .map_err(map_err(m::GEN))
    }

    /// Attaches one of the object's helper programs (`m::PROG_PASS`, `PROG_SINK`,
    /// `PROG_FLOOR`) to `iface`; `detach` removes it. Never pinned.
    pub fn attach_helper(
        &mut self,
        name: &'static str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<AttachMode, DataPathError> {
        if name == m::PROG_LB {
            return Err(DataPathError::Option(
                "attach the load balancer with attach()".into(),
            ));
        }
        let (id, used) = self.attach_program(name, iface, mode)?;
        self.push(iface, name, Held::Owned(id), Some(used), false);
        Ok(used)
    }

    /// The sink counts only frames to this UDP destination port in its second counter.
    pub fn set_sink_port(&mut self, port: u16) -> Result<(), DataPathError> {
        let mut a: Array<_, u32> = self.typed(m::SINK_CFG)?;
        a.set(0, port.to_be() as u32, 0)
            .map_err(map_err(m::SINK_CFG))
    }

    /// What the sink dropped so far, summed over CPUs: (IPv4 UDP frames, those to its port).
    pub fn sink_counts(&self) -> Result<(u64, u64), DataPathError> {
        let all = self.sink_per_cpu()?.iter().sum();
        let arr: PerCpuArray<_, u64> = self.typed_ref(m::SINK)?;
        let port = arr.get(&m::SINK_PORT, 0).map_err(map_err(m::SINK))?;
        Ok((all, port.iter().sum()))
    }

    /// The sink's IPv4 UDP frames per CPU (index = CPU id): where the receiving end ran.
    pub fn sink_per_cpu(&self) -> Result<Vec<u64>, DataPathError> {
        let arr: PerCpuArray<_, u64> = self.typed_ref(m::SINK)?;
        let v = arr.get(&m::SINK_ALL, 0).map_err(map_err(m::SINK))?;
        Ok(v.iter().copied().collect())
    }

    /// The floor forwarder sends every frame out of `ifindex` with these MACs. Call it in the
    /// interface's namespace: the devmap resolves the index in the caller's.
    pub fn set_floor(&mut self, ifindex: u32, dst: Mac, src: Mac) -> Result<(), DataPathError> {
        let mut macs = [0u8; 16];
        macs[..6].copy_from_slice(&dst.0);
        macs[6..12].copy_from_slice(&src.0);
        let mut a: Array<_, [u8; 16]> = self.typed(m::FLOOR)?;
        a.set(0, macs, 0).map_err(map_err(m::FLOOR))?;
        let mut tx: DevMap<&mut MapData> = self.typed(m::FLOOR_TX)?;
        tx.set(0, ifindex, None, 0).map_err(|e| DataPathError::Map {
            map: m::FLOOR_TX,
            reason: e.to_string(),
        })
    }
}
