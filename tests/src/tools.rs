//! The test and benchmark programs (the lb-ebpf-tools object, built by this crate's build.rs):
//! the live-frames generator, the sink that counts what a benchmark delivers, and the floor
//! forwarder. Their own object, loaded here only: the daemon's object and the `xdplb` binary
//! hold the load balancer's programs alone. Each program needs only its own maps, so none of
//! them shares state with a loaded load balancer (the generator sends out of an interface, the
//! floor redirects through its own devmap).

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use aya::{
    include_bytes_aligned,
    maps::{Array, DevMap, MapData, PerCpuArray},
    programs::{
        xdp::{XdpLinkId, XdpMode},
        Xdp,
    },
    Ebpf,
};
use lb_common::{csum, maps as m};
use lb_userspace::model::Mac;

/// The object build.rs made (empty when built with AYA_BUILD_SKIP=1).
pub static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf-tools"));

/// The loaded tools object and what it attached.
pub struct Tools {
    ebpf: Ebpf,
    /// (interface, program, link): detached by `detach` or when dropped.
    links: Vec<(String, &'static str, XdpLinkId)>,
}

impl Tools {
    /// Loads the object: creates its maps; each program is verified when first used.
    pub fn load() -> Result<Tools> {
        if OBJECT.is_empty() {
            bail!("lb-tests was built with AYA_BUILD_SKIP=1 and carries no test programs");
        }
        Ok(Tools {
            ebpf: Ebpf::load(OBJECT).context("loading the test programs (lb-ebpf-tools)")?,
            links: Vec::new(),
        })
    }

    /// `name` (`m::PROG_GEN`, `PROG_SINK`, `PROG_FLOOR`), verified on first use.
    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} is not in the tools object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load().with_context(|| format!("verifying {name}"))?;
        }
        Ok(prog)
    }

    /// Attaches `name` to `iface` (of the calling thread's namespace) in driver mode, the mode
    /// that receives frames sent into a veth; `detach` removes it.
    pub fn attach(&mut self, name: &'static str, iface: &str) -> Result<()> {
        let link = self
            .program(name)?
            .attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {iface}"))?;
        self.links.push((iface.to_string(), name, link));
        Ok(())
    }

    /// Detaches whatever `attach` put on `iface`.
    pub fn detach(&mut self, iface: &str) -> Result<()> {
        while let Some(i) = self.links.iter().position(|l| l.0 == iface) {
            let (_, name, link) = self.links.remove(i);
            self.program(name)?
                .detach(link)
                .with_context(|| format!("detaching {name} from {iface}"))?;
        }
        Ok(())
    }

    /// Sets the generator's traffic: every frame starts as the first 42 bytes of `template`
    /// (an untagged IPv4 frame without options carrying UDP or TCP; its IPv4 checksum is
    /// recomputed here, a UDP checksum cleared, a TCP checksum left as is, so wrong), and
    /// packet n belongs to flow n mod `flows`, from `first_src + f / 16384`, port
    /// `1024 + f % 16384`.
    pub fn set_generator(
        &mut self,
        flows: u32,
        first_src: Ipv4Addr,
        template: &[u8],
    ) -> Result<()> {
        let len = m::GEN_HDR_LEN;
        if template.len() < len || template[12..14] != [0x08, 0x00] {
            bail!("generator template: needs an untagged IPv4 frame of at least 42 bytes");
        }
        let udp = template[23] == 17;
        if template[14] != 0x45 || !(udp || template[23] == 6) {
            bail!("generator template: needs IPv4 without options carrying UDP or TCP");
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
        self.array::<[u64; 6]>(m::GEN_HDR)?.set(0, words, 0)?;
        let cfg = [flows.max(1), u32::from(first_src), 0, 0];
        self.array::<[u32; 4]>(m::GEN)?.set(0, cfg, 0)?;
        Ok(())
    }

    /// The sink counts only frames to this UDP destination port in its second counter.
    pub fn set_sink_port(&mut self, port: u16) -> Result<()> {
        Ok(self
            .array::<u32>(m::SINK_CFG)?
            .set(0, port.to_be() as u32, 0)?)
    }

    /// What the sink dropped so far, summed over CPUs: (IPv4 UDP frames, those to its port).
    pub fn sink_counts(&self) -> Result<(u64, u64)> {
        let all = self.sink_per_cpu()?.iter().sum();
        let port = self.sink()?.get(&m::SINK_PORT, 0)?;
        Ok((all, port.iter().sum()))
    }

    /// The sink's IPv4 UDP frames per CPU (index = CPU id): where the receiving end ran.
    pub fn sink_per_cpu(&self) -> Result<Vec<u64>> {
        Ok(self.sink()?.get(&m::SINK_ALL, 0)?.iter().copied().collect())
    }

    /// The floor forwarder sends every frame out of `ifindex` with these MACs. Call it in the
    /// interface's namespace: the devmap resolves the index in the caller's.
    pub fn set_floor(&mut self, ifindex: u32, dst: Mac, src: Mac) -> Result<()> {
        let mut macs = [0u8; 16];
        macs[..6].copy_from_slice(&dst.0);
        macs[6..12].copy_from_slice(&src.0);
        self.array::<[u8; 16]>(m::FLOOR)?.set(0, macs, 0)?;
        let map = self.map_mut(m::FLOOR_TX)?;
        DevMap::<&mut MapData>::try_from(map)?
            .set(0, ifindex, None, 0)
            .with_context(|| format!("map {}: setting the egress {ifindex}", m::FLOOR_TX))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} is not in the tools object"))
    }

    fn array<T: aya::Pod>(&mut self, name: &str) -> Result<Array<&mut MapData, T>> {
        Ok(Array::try_from(self.map_mut(name)?)?)
    }

    fn sink(&self) -> Result<PerCpuArray<&MapData, u64>> {
        let map = self
            .ebpf
            .map(m::SINK)
            .context("map XDPLB_SINK is not in the tools object")?;
        Ok(PerCpuArray::try_from(map)?)
    }
}
